"""Noisy labels as data: label files a trial trains on, their content hash, and the noise records
a sweep keeps. numpy only (the trainer, the config and the results store all use it).

Content hash of a label vector y (int64, length n) of dataset D::

    sha256( b"<D>:<n>:" + y.astype("<i8").tobytes() )      (hex, 64 characters)

A trial trained on labels y records ``noise_hash`` = that hash; the store keeps the labels once,
in ``<results>/<sweep>/noise/<hash>.npz`` (`write_noise_record`): two trials that name the same
hash trained on the same labels. A trial with ``noise = "file"`` keeps the first
``FILE_KEY_CHARS`` characters of its file's hash as its ``noise_key``, so the file's content,
not its path, is part of the trial's identity.

Label files (`read_label_file`): an ``.npz`` holding an array ``labels`` (or a single array of
any name), or a ``.csv`` with one integer label per line, or a header line and a ``label``
column; one label per training sample, in the dataset's order. Nothing is unpickled.
"""
from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from drainage_bench.atomic import atomic_write
from drainage_bench.errors import UserError

FILE_KEY_CHARS = 12  # characters of the content hash in a file trial's noise_key (and trial_id)
LABEL_FILE_HELP = ("a label file is an .npz with an array 'labels' (or a single array) or a .csv with one "
                   "integer label per line (or a 'label' column), one label per training sample in the dataset's order")


def labels_hash(labels: np.ndarray, dataset: str) -> str:
    """sha256 of ``b"<dataset>:<n>:"`` followed by the labels as little-endian int64 bytes."""
    array = np.ascontiguousarray(np.asarray(labels), dtype="<i8")
    digest = hashlib.sha256(f"{dataset}:{array.shape[0]}:".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Label files


def read_label_file(path: str | Path) -> np.ndarray:
    """The labels of an .npz or .csv label file as a read-only int64 array; ``UserError`` (naming
    the file and the problem) for a missing, unreadable or malformed file. Cached by path, size
    and modification time."""
    path = Path(path).expanduser().absolute()
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"label file {path} does not exist; {LABEL_FILE_HELP}") from None
    if not path.is_file():
        raise UserError(f"label file {path} is not a file; {LABEL_FILE_HELP}")
    return _read_cached(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        values = _read_npz(Path(path))
    elif suffix == ".csv":
        values = _read_csv(Path(path))
    else:
        raise UserError(f"label file {path}: unknown suffix {suffix or '(none)'!r}, use .npz or .csv; {LABEL_FILE_HELP}")
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise UserError(f"label file {path}: expected a non-empty 1-D array of labels, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"label file {path}: labels must be integers, got {array.dtype} values")
    out = array.astype(np.int64)
    out.setflags(write=False)
    return out


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "labels" in names:
                return archive["labels"]
            if len(names) == 1:
                return archive[names[0]]
            raise UserError(f"label file {path} holds {', '.join(names) or 'no arrays'} but no 'labels' array; "
                            "name the array 'labels' or keep a single array in the file")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read label file {path} ({type(err).__name__}: {err}); {LABEL_FILE_HELP}") from None


def _read_csv(path: Path) -> list[int]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read label file {path} ({type(err).__name__}); {LABEL_FILE_HELP}") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(v.strip() for v in r)]
    if not rows:
        raise UserError(f"label file {path} is empty; {LABEL_FILE_HELP}")
    first = rows[0]
    if len(first) == 1 and _is_int(first[0]):
        column, start = 0, 0  # one label per line
    else:
        header = [h.strip().lower() for h in first]
        if "label" not in header:
            raise UserError(f"label file {path}: first line {','.join(first)!r} is neither an integer label nor a "
                            "header with a 'label' column; write one label per line or add a 'label' column")
        column, start = header.index("label"), 1
    labels = []
    for line, row in enumerate(rows[start:], start=start + 1):
        value = row[column].strip() if column < len(row) else ""
        if not _is_int(value):
            raise UserError(f"label file {path}, row {line}: {value!r} is not an integer label")
        labels.append(int(value))
    if not labels:
        raise UserError(f"label file {path} has a header but no labels")
    return labels


def _is_int(text: str) -> bool:
    text = text.strip()
    return text.lstrip("+-").isdigit()


def check_labels(path: str | Path, labels: np.ndarray, num_classes: int | None = None,
                 n_train: int | None = None) -> None:
    """``UserError`` naming `path` when the labels do not fit: a length other than the training
    set's `n_train`, or labels outside 0..num_classes-1."""
    if n_train is not None and labels.shape[0] != n_train:
        raise UserError(f"label file {path} has {labels.shape[0]} labels but the training set has {n_train} "
                        "samples; give one label per training sample, in the dataset's order")
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise UserError(f"label file {path} has labels outside 0..{num_classes - 1} (e.g. {int(bad[0])}, "
                        f"{bad.size} in all); the dataset has {num_classes} classes")


def file_key(path: str | Path, dataset: str, num_classes: int | None = None) -> str:
    """The noise_key of a file trial: the first FILE_KEY_CHARS characters of its labels' hash."""
    labels = read_label_file(path)
    check_labels(path, labels, num_classes)
    return labels_hash(labels, dataset)[:FILE_KEY_CHARS]


# ---------------------------------------------------------------------------------------------
# Noise records in the results store


def noise_record(noisy: np.ndarray, clean: np.ndarray, transition: np.ndarray, nominal_rate: float,
                 realized_rate: float, dataset: str, noise: str) -> dict[str, Any]:
    """What a trial trained on, as the arrays `write_noise_record` stores (``hash`` included)."""
    noisy = np.asarray(noisy, dtype=np.int64)
    return {"hash": labels_hash(noisy, dataset), "dataset": dataset, "noise": noise,
            "noisy_labels": noisy, "clean_labels": np.asarray(clean, dtype=np.int64),
            "transition": np.asarray(transition, dtype=np.float64),
            "nominal_rate": float(nominal_rate), "realized_rate": float(realized_rate)}


def noise_path(folder: str | Path, digest: str) -> Path:
    return Path(folder) / f"{digest}.npz"


def write_noise_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """``<folder>/<hash>.npz`` (np.savez, no pickles), written once: a file that is there holds
    the same labels (its name is their hash). Written to a temporary name and renamed, so two
    workers writing it at once each put a complete file in place."""
    path = noise_path(folder, record["hash"])
    if path.is_file():
        return path

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a file object: np.savez would add .npz to a name
            np.savez(handle, **{k: np.asarray(v) for k, v in record.items()})

    return atomic_write(path, write)


def read_noise_record(path: str | Path) -> dict[str, Any]:
    """A stored noise record: arrays as arrays, the scalars and strings as Python values."""
    with np.load(path, allow_pickle=False) as archive:
        out = {k: archive[k] for k in archive.files}
    return {k: (v.item() if v.ndim == 0 else v) for k, v in out.items()}


def nominal_rate(noise: str, rate: float, rated: tuple[str, ...]) -> float:
    """The rate a noise setting claims: its rate for rated types, 0 for none, NaN otherwise."""
    if noise in rated:
        return float(rate)
    return 0.0 if noise == "none" else math.nan
