"""Run conditions: what a trial's numbers depend on beyond its TrialConfig, set and recorded.

On the CPU, the same TrialConfig gives the same numbers only under the same torch thread count
(the order of float sums in a matmul or a convolution follows the threads), the same torch build
and CPU capability (the kernels: AVX2, AVX512, ...), and the same numpy, scipy, scikit-learn and
torchvision (`LIBRARIES`). On CUDA, also the CUDA/cuDNN versions, the
GPU and whether deterministic algorithms were on. Every entry point (``train``, ``sweep``,
``tune``) sets the thread count the same way, from the trial's CPU share (`use_cpu_share`), and
every record keeps `provenance()`.
"""
from __future__ import annotations

import math
import os
from importlib import metadata
from typing import Any

import numpy as np
import torch

from drainage_bench.errors import UserError

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's setting for reproducible results (CUDA docs, "Results reproducibility")
# Libraries besides torch and numpy whose algorithms the numbers follow: scikit-learn splits the
# digits train/test set and every 80/20 validation split (train_test_split), scipy draws the
# per-sample flip rates of instance noise (stats.truncnorm), torchvision encodes and decodes JPEG
# (the jpeg_compression corruption, streamed images).
LIBRARIES = {"scipy_version": "scipy", "sklearn_version": "scikit-learn", "torchvision_version": "torchvision"}


def threads_for(cpus_per_trial: float) -> int:
    """torch threads of a trial: its whole CPUs, at least one (0.5 CPU runs on one thread). A share
    that is not > 0 is refused here, for every entry point (train, sweep, tune)."""
    if not 0 < cpus_per_trial < math.inf:
        raise UserError(f"--cpus-per-trial={cpus_per_trial:g} must be a finite number > 0")
    return max(1, int(cpus_per_trial))


def use_cpu_share(cpus_per_trial: float) -> int:
    """The one thread policy: torch uses as many threads as the trial has whole CPUs."""
    threads = threads_for(cpus_per_trial)
    torch.set_num_threads(threads)
    return threads


def use_deterministic(enabled: bool) -> None:
    """Deterministic algorithms on or off, for this process (a reused Ray actor runs the next
    trial with its own setting).

    On: torch.use_deterministic_algorithms(True) (an op without a deterministic kernel raises),
    cuDNN's autotuner off, and CUBLAS_WORKSPACE_CONFIG=:4096:8, which cuBLAS reads when it is
    first used in the process, so it is set before anything runs on the GPU. An existing value of
    the variable is kept. Off (the default): torch's fast kernels.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled


def provenance(device: torch.device | str) -> dict[str, Any]:
    """The run conditions of a trial, as flat record columns."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cuda": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "numpy_version": np.__version__,
        **{column: _version(package) for column, package in LIBRARIES.items()},
    }


def _version(package: str) -> str | None:
    """The installed version of `package` (read from its metadata, without importing it)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
