"""Datasets as tensors, and the dataset registry.

Small datasets (digits, MNIST, Fashion-MNIST, CIFAR-10/100 and their CIFAR-N variants) load
completely into memory as :class:`TensorData` (uint8 images, int64 clean labels); the training
loop moves them to the device and batches by index slices. Large image-folder datasets
(mini-WebVision, Clothing1M) are :class:`StreamData`: file lists whose images are decoded on the
fly through a DataLoader.

Files are read from a data root (``--data-root``, else ``$DRAINAGE_BENCH_DATA``, else ``./data``)
in the standard torchvision folder layouts. Nothing is downloaded unless ``download=True``; nothing
is ever written next to the source files (the data root may be read-only). CIFAR batch files are
pickles: they are read with an unpickler that refuses every global except numpy's array
reconstruction, so a tampered file cannot run code.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from drainage_bench.errors import UserError, lookup

DATA_ROOT_ENV = "DRAINAGE_BENCH_DATA"
STREAM_RESIZE = 256  # short side after resizing, before the center crop (image-folder datasets)
STREAM_IMAGE_SIZE = 224  # side of the center crop fed to the network (image-folder datasets)
# Image-folder datasets are too large to measure; they use the ImageNet statistics, as is usual.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_TEST_SIZE = 540  # of 1797 -> 1257 train / 540 test (about 30%), stratified, seed 0
DIGITS_SPLIT_SEED = 0


@dataclass
class TensorData:
    """A whole dataset in memory (CPU tensors; the loop moves them to the device).

    The tensors are shared by every caller of :func:`load_dataset` (it caches): never modify
    them in place.
    """

    name: str
    train_images: torch.Tensor  # uint8 (N, C, H, W)
    train_labels: torch.Tensor  # int64 (N,), clean labels
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training images scaled to [0, 1]
    std: tuple[float, ...]
    class_names: tuple[str, ...]


@dataclass
class StreamData:
    """An image-folder dataset decoded on the fly: ``train[i]`` is a uint8 (C, H, W) tensor.

    The labels are known without decoding; for WebVision and Clothing1M the training labels are
    the dataset's own (noisy) labels.
    """

    name: str
    train: Dataset
    test: Dataset
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    # Further evaluation sets, name -> (images, labels): "val", a held-out set of the dataset's
    # own (Clothing1M's clean validation keys, for model selection), or another test set
    # ("imagenet": WebVision's classes in the ILSVRC2012 validation images).
    evals: dict[str, tuple[Dataset, torch.Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about a dataset before loading it."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    loader: Callable[[Path, bool], TensorData | StreamData]  # (root, download) -> data
    required: tuple[str, ...]  # paths relative to the data root that must exist
    recipe: str  # name of the training recipe (cifar10n trains like cifar10)
    description: str


DATASETS: dict[str, DatasetInfo] = {}


def _register(info: DatasetInfo) -> None:
    DATASETS[info.name] = info


# --------------------------------------------------------------------------- public functions


def resolve_data_root(cli_value: str | Path | None) -> Path:
    """The data root: ``--data-root`` if given, else ``$DRAINAGE_BENCH_DATA``, else ``./data``."""
    if cli_value:
        return Path(cli_value).expanduser()
    env_value = os.environ.get(DATA_ROOT_ENV)
    if env_value:
        return Path(env_value).expanduser()
    return Path("data")


def dataset_status(name: str, root: Path) -> tuple[bool, str]:
    """Whether ``name`` can be loaded from ``root``, and a one-line detail (the missing path)."""
    info = _lookup(name)
    if not info.required:
        return True, "bundled, needs no files"
    root = Path(root)
    if not root.is_dir():
        return False, f"data root {root} does not exist"
    missing = _first_missing(info, root)
    if missing is not None:
        return False, f"missing {root / missing}"
    return True, f"found under {root}"


def load_dataset(name: str, root: Path, download: bool = False) -> TensorData | StreamData:
    """Load a registered dataset from ``root`` (cached in-process by name, root and download)."""
    info = _lookup(name)
    return _load_cached(info.name, Path(root).expanduser().absolute(), bool(download))


def stratified_split(
    labels: torch.Tensor | np.ndarray, val_fraction: float | int = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)``, sorted int64, with each class split in proportion.

    ``val_fraction`` is a fraction in (0, 1), or (an int) the number of held-out samples. Uses
    ``sklearn.model_selection.train_test_split(..., stratify=labels)``; the same labels and seed
    always give the same split.
    """
    from sklearn.model_selection import train_test_split

    if not isinstance(val_fraction, int) and not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction={val_fraction} is out of range; valid: 0 < val_fraction < 1")
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise UserError(f"cannot split {len(labels)} labels with val_fraction={val_fraction}: {exc}") from exc
    return np.sort(train_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)


# --------------------------------------------------------------------------- registry helpers


def _lookup(name: str) -> DatasetInfo:
    return lookup("dataset", name, DATASETS)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Path, download: bool) -> TensorData | StreamData:
    return DATASETS[name].loader(root, download)


def _candidates(relative: str) -> tuple[str, ...]:
    """The accepted files for a required path: IDX files may be unpacked, CIFAR-N labels ``.pt``."""
    if relative.endswith(".gz"):
        return relative, relative.removesuffix(".gz")
    if relative.endswith(".npz"):
        return relative, relative.removesuffix(".npz") + ".pt"
    return (relative,)


def _find(root: Path, relative: str) -> Path | None:
    """The first accepted file for ``relative`` that exists under ``root``."""
    for candidate in _candidates(relative):
        if (root / candidate).is_file():
            return root / candidate
    return None


def _first_missing(info: DatasetInfo, root: Path) -> str | None:
    return next((rel for rel in info.required if _find(root, rel) is None), None)


@dataclass(frozen=True)
class _DataFolder:
    """A dataset's files under a data root, and one-line errors that name them."""

    info: DatasetInfo
    root: Path

    def path(self, relative: str) -> Path:
        return _find(self.root, relative) or self.root / relative

    def error(self, path: Path, problem: str) -> UserError:
        top = path.relative_to(self.root).parts[0]
        hint = "pass --data-root DIR" + (" or --download" if top in _DOWNLOADERS else "")
        layout = ", ".join(self.info.required)
        return UserError(f"{path} {problem}; {self.info.name} expects the layout <data root>/{{{layout}}}; {hint}")


def _ensure_available(name: str, root: Path, download: bool) -> _DataFolder:
    """Fetch missing files if asked to, then fail naming the first path still missing."""
    folder = _DataFolder(DATASETS[name], root)
    if download:
        missing_tops = sorted({rel.split("/")[0] for rel in folder.info.required if _find(root, rel) is None})
        for top in missing_tops:
            if top not in _DOWNLOADERS:
                raise folder.error(root / top, "cannot be downloaded automatically")
        for top in missing_tops:
            _DOWNLOADERS[top](root)
    if not root.is_dir():
        raise UserError(
            f"data root {root} does not exist; pass --data-root DIR or set {DATA_ROOT_ENV} "
            "(the digits dataset needs no files)"
        )
    missing = _first_missing(folder.info, root)
    if missing is not None:
        raise folder.error(root / missing, "not found")
    return folder


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images scaled to [0, 1]."""
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, len(images), 4096):  # float64 in chunks: exact sums, bounded memory
        chunk = images[start : start + 4096].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(total_sq / count / 255.0**2 - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _tensor_data(name, train_images, train_labels, test_images, test_labels, class_names) -> TensorData:
    mean, std = _channel_stats(train_images)
    return TensorData(
        name=name,
        train_images=torch.from_numpy(np.ascontiguousarray(train_images)),
        train_labels=torch.from_numpy(np.asarray(train_labels, dtype=np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        num_classes=len(class_names),
        mean=mean,
        std=std,
        class_names=tuple(class_names),
    )


def _check_labels(labels: np.ndarray, count: int, path: Path, folder: _DataFolder) -> None:
    num_classes = folder.info.num_classes
    if len(labels) != count:
        raise folder.error(path, f"holds {len(labels)} labels for {count} images")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise folder.error(path, f"holds labels outside 0..{num_classes - 1}")


# --------------------------------------------------------------------------- digits (bundled)

DIGIT_NAMES = tuple(str(d) for d in range(10))


def _load_digits(root: Path, download: bool) -> TensorData:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255), split 1257/540 stratified.

    The data ship with scikit-learn, so ``root`` and ``download`` are not used.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * 255.0 / 16.0).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)
    return _tensor_data(
        "digits", images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], DIGIT_NAMES
    )


_register(
    DatasetInfo(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        loader=_load_digits,
        required=(),
        recipe="digits",
        description="scikit-learn 8x8 handwritten digits (1257 train / 540 test), bundled",
    )
)


# --------------------------------------------------------------------------- MNIST-like (IDX files)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _idx_files(folder: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/raw/{split}-{kind}-ubyte.gz"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    )


def _read_idx(path: Path, magic: int, folder: _DataFolder) -> np.ndarray:
    """An IDX file (gzip-compressed or not) as a uint8 array, after checking header and size."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise folder.error(path, f"cannot be read ({exc})") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise folder.error(path, f"is not an IDX file with magic number {magic} (found {found})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if len(raw) - header != int(np.prod(shape)):
        raise folder.error(path, f"has {len(raw) - header} data bytes, its header says {shape}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _read_idx_split(folder: _DataFolder, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_rel, label_rel = (rel for rel in folder.info.required if f"/{split}-" in rel)
    image_path, label_path = folder.path(image_rel), folder.path(label_rel)
    images = _read_idx(image_path, IDX_IMAGES_MAGIC, folder)
    labels = _read_idx(label_path, IDX_LABELS_MAGIC, folder).astype(np.int64)
    size = folder.info.image_size
    if images.shape[1:] != (size, size):
        raise folder.error(image_path, f"holds images of shape {images.shape[1:]}, expected ({size}, {size})")
    _check_labels(labels, len(images), label_path, folder)
    return images[:, None, :, :], labels


def _load_idx_dataset(name: str, class_names: tuple[str, ...], root: Path, download: bool) -> TensorData:
    folder = _ensure_available(name, root, download)
    train_images, train_labels = _read_idx_split(folder, "train")
    test_images, test_labels = _read_idx_split(folder, "t10k")
    return _tensor_data(name, train_images, train_labels, test_images, test_labels, class_names)


def _download_idx(dataset_class_name: str, root: Path) -> None:
    """torchvision's MNIST / FashionMNIST downloader (fetches the .gz files into the root)."""
    import torchvision.datasets

    getattr(torchvision.datasets, dataset_class_name)(str(root), train=True, download=True)


for _name, _folder, _names, _text in (
    ("mnist", "MNIST", DIGIT_NAMES, "MNIST handwritten digits 28x28 (60000 train / 10000 test)"),
    ("fashion_mnist", "FashionMNIST", FASHION_NAMES, "Fashion-MNIST clothing 28x28 (60000 / 10000)"),
):
    _register(
        DatasetInfo(
            name=_name,
            num_classes=10,
            in_channels=1,
            image_size=28,
            loader=functools.partial(_load_idx_dataset, _name, _names),
            required=_idx_files(_folder),
            recipe=_name,
            description=_text,
        )
    )


# --------------------------------------------------------------------------- CIFAR (python pickles)

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip (the fine labels of CIFAR-100, in label order)

_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's array-reconstruction function
_ARRAY_DTYPES = (np.int64, np.int32, np.int16, np.int8, np.uint8, np.float64, np.float32)
# The only globals an untrusted pickle may name: what a numpy array of these dtypes needs, as
# pickles written by numpy 1 and 2 name it. Used by the CIFAR unpickler here and, for the
# CIFAR-N .pt files, by torch.load(weights_only=True) (noise.py).
ARRAY_GLOBALS = {
    "numpy.core.multiarray._reconstruct": _RECONSTRUCT,
    "numpy._core.multiarray._reconstruct": _RECONSTRUCT,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    **{f"{type(np.dtype(k)).__module__}.{type(np.dtype(k)).__name__}": type(np.dtype(k)) for k in _ARRAY_DTYPES},
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, bytes and numpy arrays; refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str):
        try:
            return ARRAY_GLOBALS[f"{module}.{name}"]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def _read_cifar_batch(path: Path, label_key: bytes, folder: _DataFolder) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: images uint8 (n, 3, 32, 32) and int64 labels."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # a malformed or hostile pickle can fail in many ways
        raise folder.error(path, f"is not a readable CIFAR batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise folder.error(path, f"is not a CIFAR batch (a dict with b'data' and {label_key!r})")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise folder.error(path, "holds b'data' that is not a uint8 array of shape (n, 3072)")
    labels = np.asarray(batch[label_key], dtype=np.int64)
    _check_labels(labels, len(data), path, folder)
    # Each row is the red, then green, then blue 32x32 plane, row-major: exactly (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar_files(folder: _DataFolder, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_cifar_batch(folder.path(rel), label_key, folder) for rel in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    class_names: tuple[str, ...]
    torchvision_class: str


_CIFAR10 = _CifarLayout(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels",
    CIFAR10_NAMES, "CIFAR10",
)  # fmt: skip
_CIFAR100 = _CifarLayout("cifar-100-python", ("train",), "test", b"fine_labels", CIFAR100_NAMES, "CIFAR100")


def _load_cifar(name: str, layout: _CifarLayout, root: Path, download: bool) -> TensorData:
    folder = _ensure_available(name, root, download)
    train_rel = [f"{layout.folder}/{f}" for f in layout.train_files]
    train_images, train_labels = _read_cifar_files(folder, train_rel, layout.label_key)
    test_images, test_labels = _read_cifar_files(folder, [f"{layout.folder}/{layout.test_file}"], layout.label_key)
    return _tensor_data(name, train_images, train_labels, test_images, test_labels, layout.class_names)


def _download_cifar(dataset_class_name: str, root: Path) -> None:
    """Fetch and unpack torchvision's CIFAR archive (md5-checked) without unpickling anything."""
    import torchvision.datasets
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(torchvision.datasets, dataset_class_name)
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)


for _name, _recipe, _layout, _human_file, _text in (
    ("cifar10", "cifar10", _CIFAR10, None, "CIFAR-10 32x32 colour images (50000 / 10000)"),
    ("cifar100", "cifar100", _CIFAR100, None, "CIFAR-100 32x32 colour images, 100 fine classes (50000 / 10000)"),
    ("cifar10n", "cifar10", _CIFAR10, "CIFAR-N/CIFAR-10_human.npz", "CIFAR-10 images; human labels of CIFAR-10N"),
    ("cifar100n", "cifar100", _CIFAR100, "CIFAR-N/CIFAR-100_human.npz", "CIFAR-100 images; human labels of CIFAR-100N"),
):
    _files = tuple(f"{_layout.folder}/{f}" for f in (*_layout.train_files, _layout.test_file))
    _register(
        DatasetInfo(
            name=_name,
            num_classes=len(_layout.class_names),
            in_channels=3,
            image_size=32,
            loader=functools.partial(_load_cifar, _name, _layout),
            required=_files + ((_human_file,) if _human_file else ()),
            recipe=_recipe,
            description=_text,
        )
    )


# --------------------------------------------------------------------------- SVHN (MATLAB files)

SVHN_FILES = ("SVHN/train_32x32.mat", "SVHN/test_32x32.mat")  # torchvision.datasets.SVHN(root / "SVHN")


def _read_svhn(path: Path, folder: _DataFolder) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN cropped-digits file: ``X`` uint8 (32, 32, 3, N) -> (N, 3, 32, 32); ``y`` (N, 1)
    with digit 0 stored as 10, mapped to 0 as torchvision does. Read with scipy.io.loadmat (a
    MATLAB v5 file holds arrays only: nothing is unpickled)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as exc:  # a truncated or foreign file fails in several ways
        raise folder.error(path, f"is not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    images, labels = mat.get("X"), mat.get("y")
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[:3] == (32, 32, 3)):
        raise folder.error(path, "has no uint8 array X of shape (32, 32, 3, N)")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    labels[labels == 10] = 0
    _check_labels(labels, images.shape[3], path, folder)
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


def _load_svhn(root: Path, download: bool) -> TensorData:
    folder = _ensure_available("svhn", root, download)
    train_images, train_labels = _read_svhn(folder.path(SVHN_FILES[0]), folder)
    test_images, test_labels = _read_svhn(folder.path(SVHN_FILES[1]), folder)
    return _tensor_data("svhn", train_images, train_labels, test_images, test_labels, DIGIT_NAMES)


def _download_svhn(root: Path) -> None:
    """torchvision's SVHN downloader (md5-checked .mat files) into ``root/SVHN``."""
    import torchvision.datasets

    for split in ("train", "test"):
        torchvision.datasets.SVHN(str(root / "SVHN"), split=split, download=True)


_register(
    DatasetInfo(
        name="svhn",
        num_classes=10,
        in_channels=3,
        image_size=32,
        loader=_load_svhn,
        required=SVHN_FILES,
        recipe="svhn",
        description="SVHN cropped digits 32x32 colour (73257 train / 26032 test; extra not used)",
    )
)

_DOWNLOADERS: dict[str, Callable[[Path], None]] = {
    "MNIST": functools.partial(_download_idx, "MNIST"),
    "FashionMNIST": functools.partial(_download_idx, "FashionMNIST"),
    _CIFAR10.folder: functools.partial(_download_cifar, _CIFAR10.torchvision_class),
    _CIFAR100.folder: functools.partial(_download_cifar, _CIFAR100.torchvision_class),
    "SVHN": _download_svhn,
}


# --------------------------------------------------------------------------- image folders (streamed)

WEBVISION_CLASSES = 50  # mini-WebVision: the Google images of the first 50 WebVision classes
WEBVISION_ALL_CLASSES = 1000  # the labels of WebVision's file lists (its ImageNet synsets)
CLOTHING1M_NAMES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Down Coat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
STREAMED_DATASETS = ("webvision", "clothing1m")  # datasets whose images stream (train_crop applies)


def center_view(image: torch.Tensor, resize: int = STREAM_RESIZE, size: int = STREAM_IMAGE_SIZE,
                square: bool = False) -> torch.Tensor:
    """The center view: resized (bilinear, antialiased), then center crop ``size``.

    By default the short side goes to ``resize`` and the aspect ratio is kept (torchvision's
    ``Resize(256)``, as the drainage code's WebVision transforms); with ``square`` the image is
    squashed to ``resize`` x ``resize`` (``Resize((256, 256))``, as the drainage code's
    ``Clothing1MDatasetLoader`` in dataset.py does before ``CenterCrop(224)``, for training and
    evaluation alike).
    """
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(image, [resize, resize] if square else resize, antialias=True), size)


class ImageFiles(Dataset):
    """Image files: ``read(i)`` their bytes, ``decode(i)`` the whole RGB image (uint8 (3, H, W)),
    ``dataset[i]`` its center view (:func:`center_view`: short side 256, or with ``square`` the
    whole image squashed to 256x256 (Clothing1M); then center crop 224)."""

    def __init__(self, paths: list[Path], size: int = STREAM_IMAGE_SIZE, resize: int = STREAM_RESIZE,
                 square: bool = False):
        self.paths = paths
        self.size = size
        self.resize = resize
        self.square = square

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> torch.Tensor:
        """The file's bytes as a uint8 1-D tensor (what a GPU decoder takes)."""
        path = self.paths[index]
        try:
            return torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        except OSError as exc:
            raise OSError(f"{path} cannot be read ({exc}); check the dataset files") from exc

    def decode(self, index: int) -> torch.Tensor:
        """The whole image, RGB uint8 (3, H, W): torchvision's decoders, PIL for other formats."""
        from torchvision.io import ImageReadMode, decode_image

        try:
            return decode_image(self.read(index), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # a format or colour space torchvision does not decode: PIL's turn
        from PIL import Image
        from torchvision.transforms.v2 import functional as TF

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                return TF.pil_to_tensor(image.convert("RGB"))
        except OSError as exc:
            # Not a UserError: found mid-training, it fails the trial (recorded), not the program.
            raise OSError(f"{path} cannot be decoded as an image ({exc}); check the dataset files") from exc

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.center(self.decode(index))

    def center(self, image: torch.Tensor) -> torch.Tensor:
        """The center view of a decoded image of these files (their ``resize``, ``size``, ``square``)."""
        return center_view(image, self.resize, self.size, self.square)


def _read_list(path: Path, with_label: bool, folder: _DataFolder) -> list[tuple[str, int]] | list[str]:
    """Lines ``<relative path> <label>`` (or just ``<relative path>``) of a file list."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != (2 if with_label else 1) or (with_label and not fields[1].lstrip("-").isdigit()):
            raise folder.error(path, f"line {number} is not '<path>{' <label>' if with_label else ''}': {line!r}")
        entries.append((fields[0], int(fields[1])) if with_label else fields[0])
    return entries


def _check_range(entries: list[tuple[str, int]], count: int, path: Path, folder: _DataFolder) -> None:
    """Every label of ``entries`` (read from ``path``) lies in 0..count-1."""
    bad = next(((p, y) for p, y in entries if not 0 <= y < count), None)
    if bad is not None:
        raise folder.error(path, f"gives {bad[0]} the label {bad[1]}, outside the classes 0..{count - 1}")


def _check_images_exist(paths: list[Path], listed_in: Path, folder: _DataFolder) -> None:
    """Every listed image exists (one directory listing per folder, not one stat per file)."""
    contents: dict[Path, set[str]] = {}
    for path in paths:
        parent = path.parent
        if parent not in contents:
            contents[parent] = set(os.listdir(parent)) if parent.is_dir() else set()
        if path.name not in contents[parent]:
            raise folder.error(path, f"not found (listed in {listed_in.name})")


def _stream_data(name, train_paths, train_labels, test_paths, test_labels, class_names, evals=None,
                 square: bool = False) -> StreamData:
    """Every split's :class:`ImageFiles` with the same view (``square``: see :func:`center_view`)."""
    return StreamData(
        name=name,
        train=ImageFiles(train_paths, square=square),
        test=ImageFiles(test_paths, square=square),
        train_labels=torch.tensor(train_labels, dtype=torch.int64),
        test_labels=torch.tensor(test_labels, dtype=torch.int64),
        num_classes=len(class_names),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        class_names=tuple(class_names),
        evals={k: (ImageFiles(paths, square=square), torch.tensor(labels, dtype=torch.int64))
               for k, (paths, labels) in (evals or {}).items()},
    )


def _read_synsets(path: Path, folder: _DataFolder) -> list[str]:
    """WebVision's ``info/synsets.txt``: line i starts with the WordNet id of class i."""
    lines = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < WEBVISION_CLASSES or not all(s.startswith("n") and s[1:].isdigit() for s in lines):
        raise folder.error(path, f"is not a list of at least {WEBVISION_CLASSES} WordNet ids (n01440764 ...), one a line")
    return lines


IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")  # the files taken from imagenet/val/<wnid>/ (case-insensitive)


def _is_image_file(path: Path) -> bool:
    """A plain file, not a dotfile, named with one of IMAGE_SUFFIXES (any case)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _imagenet_validation(root: Path, synsets: list[str], folder: _DataFolder) -> tuple[list[Path], list[int]]:
    """The ILSVRC2012 validation images of WebVision's first 50 classes, labelled 0..49.

    WebVision's class i is the ImageNet synset on line i of ``info/synsets.txt``. Two layouts:
    ``imagenet/val/<wnid>/*.JPEG`` (torchvision's, or the devkit's valprep.sh), else the flat
    ``imagenet/ILSVRC2012_img_val/ILSVRC2012_val_%08d.JPEG`` with the devkit's
    ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (line k: the
    ILSVRC2012_ID of image k) and ``meta.mat`` (ILSVRC2012_ID -> WNID). In ``val/<wnid>/`` only
    image files are taken (.jpeg, .jpg, .png in any case; no dotfiles, no folders). With neither
    layout under ``imagenet/``, a one-line UserError naming both.
    """
    base = root / "imagenet"
    wanted = synsets[:WEBVISION_CLASSES]
    if (base / "val").is_dir():
        paths, labels = [], []
        for label, wnid in enumerate(wanted):
            class_folder = base / "val" / wnid
            if not class_folder.is_dir():
                raise folder.error(class_folder, f"not found (the ILSVRC2012 validation folder of WebVision class {label})")
            files = sorted(p for p in class_folder.iterdir() if _is_image_file(p))
            paths += files
            labels += [label] * len(files)
        return paths, labels
    images = base / "ILSVRC2012_img_val"
    if not images.is_dir():
        raise folder.error(base, "has neither val/<wnid>/*.JPEG nor ILSVRC2012_img_val/ (with the devkit's "
                                 "ILSVRC2012_devkit_t12/), the two ILSVRC2012 validation layouts read")
    devkit = base / "ILSVRC2012_devkit_t12" / "data"
    truth, meta = devkit / "ILSVRC2012_validation_ground_truth.txt", devkit / "meta.mat"
    for path in (truth, meta):
        if not path.is_file():
            raise folder.error(path, f"not found (needed with {images.name}/ to label the ILSVRC2012 validation images)")
    import scipy.io  # a MAT-file parser: reads arrays, runs no code

    try:
        synset_table = scipy.io.loadmat(str(meta), squeeze_me=True)["synsets"]
        wnid_of = {int(i): str(w) for i, w in zip(synset_table["ILSVRC2012_ID"], synset_table["WNID"])}
    except Exception as exc:  # noqa: BLE001 - a damaged MAT file fails in many ways
        raise folder.error(meta, f"is not the devkit's meta.mat with synsets(ILSVRC2012_ID, WNID) ({exc})") from exc
    label_of = {wnid: label for label, wnid in enumerate(wanted)}
    paths, labels = [], []
    for number, line in enumerate(truth.read_text().split(), start=1):
        if not line.isdigit() or int(line) not in wnid_of:
            raise folder.error(truth, f"line {number} ({line!r}) is not an ILSVRC2012_ID of meta.mat")
        label = label_of.get(wnid_of[int(line)])
        if label is not None:
            paths.append(images / f"ILSVRC2012_val_{number:08d}.JPEG")
            labels.append(label)
    _check_images_exist(paths, truth, folder)
    return paths, labels


def _load_webvision(root: Path, download: bool) -> StreamData:
    """mini-WebVision: Google training images and validation images of classes 0..49.

    Training paths in ``info/train_filelist_google.txt`` are relative to ``webvision/`` (the
    unpacked ``google_resized_256.tar`` gives ``google/q0001/...``); validation paths in
    ``info/val_filelist.txt`` are relative to ``webvision/val_images_256/``. The 50 classes are
    the entries labelled 0..49, wherever they stand in the lists. With ``imagenet/`` beside
    ``webvision/`` (and ``info/synsets.txt``), the ILSVRC2012 validation images of the same 50
    synsets are a second test set, ``imagenet``.
    """
    folder = _ensure_available("webvision", root, download)
    base = root / "webvision"
    synsets_path = base / "info" / "synsets.txt"
    synsets = _read_synsets(synsets_path, folder) if synsets_path.is_file() else None
    splits = []
    for list_name, image_folder in (("train_filelist_google.txt", base), ("val_filelist.txt", base / "val_images_256")):
        list_path = base / "info" / list_name
        entries = _read_list(list_path, True, folder)
        _check_range(entries, len(synsets) if synsets else WEBVISION_ALL_CLASSES, list_path, folder)
        kept = [(image_folder / p, y) for p, y in entries if y < WEBVISION_CLASSES]
        _check_images_exist([p for p, _ in kept], list_path, folder)
        splits.append(([p for p, _ in kept], [y for _, y in kept]))
    (train_paths, train_labels), (test_paths, test_labels) = splits
    evals = {}
    if (root / "imagenet").is_dir():
        if synsets is None:
            raise folder.error(synsets_path, "not found (needed to match the ILSVRC2012 validation images under imagenet/ to WebVision's classes)")
        evals["imagenet"] = _imagenet_validation(root, synsets, folder)
    names = tuple(synsets[:WEBVISION_CLASSES]) if synsets else tuple(str(c) for c in range(WEBVISION_CLASSES))
    return _stream_data("webvision", train_paths, train_labels, test_paths, test_labels, names, evals)


CLOTHING1M_SPLITS = (  # (key list, label file): training, clean validation, clean test
    ("noisy_train_key_list.txt", "noisy_label_kv.txt"),
    ("clean_val_key_list.txt", "clean_label_kv.txt"),
    ("clean_test_key_list.txt", "clean_label_kv.txt"),
)


def _load_clothing1m(root: Path, download: bool) -> StreamData:
    """Clothing1M: the noisy training keys with their noisy labels; the clean validation keys
    (the evaluation ``val``, on which the model is selected) and the clean test keys.

    Keys (``images/0/00/....jpg``) are relative to ``clothing1m/``; labels come from
    ``annotations/noisy_label_kv.txt`` and ``annotations/clean_label_kv.txt``. Every split's center
    view squashes the image to 256x256 before the 224 crop (``square``), as the drainage code's
    ``Clothing1MDatasetLoader`` (dataset.py: ``Resize((256, 256))``, ``CenterCrop(224)``).
    """
    folder = _ensure_available("clothing1m", root, download)
    base = root / "clothing1m"
    notes = base / "annotations"
    label_files = {}
    splits = []
    for key_list, label_file in CLOTHING1M_SPLITS:
        if label_file not in label_files:
            label_files[label_file] = dict(_read_list(notes / label_file, True, folder))
        label_of = label_files[label_file]
        keys = _read_list(notes / key_list, False, folder)
        unlabelled = next((k for k in keys if k not in label_of), None)
        if unlabelled is not None:
            raise folder.error(notes / label_file, f"has no label for {unlabelled} (listed in {key_list})")
        entries = [(k, label_of[k]) for k in keys]
        _check_range(entries, len(CLOTHING1M_NAMES), notes / label_file, folder)
        paths = [base / k for k in keys]
        _check_images_exist(paths, notes / key_list, folder)
        splits.append((paths, [y for _, y in entries]))
    (train_paths, train_labels), val, (test_paths, test_labels) = splits
    return _stream_data("clothing1m", train_paths, train_labels, test_paths, test_labels, CLOTHING1M_NAMES,
                        {"val": val}, square=True)


_register(
    DatasetInfo(
        name="webvision",
        num_classes=WEBVISION_CLASSES,
        in_channels=3,
        image_size=STREAM_IMAGE_SIZE,
        loader=_load_webvision,
        required=("webvision/info/train_filelist_google.txt", "webvision/info/val_filelist.txt"),
        recipe="webvision",
        description="mini-WebVision (Google images, first 50 classes), real web label noise; streamed; "
                    "+ ILSVRC2012 validation images of the same classes when imagenet/ is there",
    )
)
_register(
    DatasetInfo(
        name="clothing1m",
        num_classes=len(CLOTHING1M_NAMES),
        in_channels=3,
        image_size=STREAM_IMAGE_SIZE,
        loader=_load_clothing1m,
        required=tuple(f"clothing1m/annotations/{f}" for f in (
            "noisy_label_kv.txt", "clean_label_kv.txt", "noisy_train_key_list.txt", "clean_val_key_list.txt",
            "clean_test_key_list.txt")),
        recipe="clothing1m",
        description="Clothing1M (14 classes), real label noise in the training set; model selection on the "
                    "clean validation keys; streamed",
    )
)
