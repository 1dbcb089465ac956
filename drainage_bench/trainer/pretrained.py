"""Starting weights from a file the user names (the ``pretrained`` field); nothing is downloaded.

The file is a state dict as torchvision saves it (``torch.save(model.state_dict(), path)``, e.g.
torchvision's ImageNet ResNet-50 ``resnet50-11ad3fa6.pth``), loaded with
``torch.load(weights_only=True)`` (tensors only: no pickled code runs). Every parameter and buffer
of the model except its classifier head must be in the file with the same shape; the file's own
head (the keys under the head module's name, ``fc.`` for ResNet-50) is dropped and the head keeps
its fresh initialisation, as the reference code does when it replaces ``fc``. A BatchNorm count
(``num_batches_tracked``), absent from older files, may be missing.

A relative path is taken under the data root. The trial's identity holds the path as given; the
record holds the SHA-256 of the file's bytes (``pretrained_sha256``), so two trials that name the
same file are comparable only if the hashes agree.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from drainage_bench.config import TrialConfig
from drainage_bench.errors import UserError
from drainage_bench.trainer.data import resolve_data_root
from drainage_bench.trainer.models import ClassifierHead


def weights_path(config: TrialConfig) -> Path | None:
    """Where the trial's starting weights are (None: a fresh initialisation)."""
    if config.pretrained is None:
        return None
    path = Path(config.pretrained).expanduser()
    return path if path.is_absolute() else resolve_data_root(config.data_root) / path


def require_weights(config: TrialConfig) -> None:
    """Fail with one line if the trial names a weights file that is not there."""
    path = weights_path(config)
    if path is not None and not path.is_file():
        raise UserError(
            f"pretrained={config.pretrained!r}: {path} not found; the trial starts {config.model} from a state-dict "
            "file you provide (the Clothing1M recipe: torchvision's ImageNet ResNet-50 weights, e.g. "
            "resnet50-11ad3fa6.pth, saved at that path), or name one with --set pretrained=FILE; "
            "--set pretrained=none trains from a random initialisation")


@dataclass
class PretrainedWeights:
    path: Path
    sha256: str
    state: dict[str, torch.Tensor]

    def apply(self, model: nn.Module) -> None:
        """Copy every tensor of the model except its head from the file (UserError if they do not fit)."""
        heads = [name for name, m in model.named_modules() if isinstance(m, ClassifierHead)]
        head_prefixes = tuple(f"{name}." for name in heads)
        body = {k: v for k, v in self.state.items() if not k.startswith(head_prefixes)}
        try:
            missing, unexpected = model.load_state_dict(body, strict=False)
        except RuntimeError as err:  # a shape mismatch
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
            raise UserError(f"{self.path} does not fit the model: {detail}") from None
        missing = [k for k in missing if not k.startswith(head_prefixes) and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            what = f"lacks {missing[0]}" if missing else f"has {unexpected[0]}, which the model does not"
            raise UserError(f"{self.path} does not fit the model: it {what} "
                            f"({len(missing)} missing, {len(unexpected)} unexpected keys); pass a state dict of the "
                            "same architecture")


def load_weights(config: TrialConfig) -> PretrainedWeights | None:
    """The trial's starting weights, read once (None without ``pretrained``)."""
    require_weights(config)
    path = weights_path(config)
    if path is None:
        return None
    raw = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)  # the bytes hashed
    except Exception as err:  # noqa: BLE001 - refused globals, truncated files, not a torch file
        raise UserError(f"{path} is not a torch state-dict file readable with weights_only=True ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise UserError(f"{path} holds no state dict (a dict of parameter name -> tensor)")
    return PretrainedWeights(path, hashlib.sha256(raw).hexdigest(), state)
