"""Tests for drainage_bench.trainer.data: loaders, layouts, errors and the stratified split."""
import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from drainage_bench.errors import UserError
from drainage_bench.trainer import data
from drainage_bench.trainer.data import (
    DATASETS,
    StreamData,
    TensorData,
    dataset_status,
    load_dataset,
    resolve_data_root,
    stratified_split,
)
from conftest import require_file

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --------------------------------------------------------------------------- helpers


class _Py2StylePickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the CIFAR batches (protocol 2).

    Strings become BINSTRING opcodes (bytes under ``encoding="bytes"``) and numpy's globals are
    named ``numpy.core.multiarray``, as in the files the CIFAR authors published.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string
    dispatch[type] = save_global


def write_py2_pickle(path: Path, obj) -> None:
    buffer = io.BytesIO()
    _Py2StylePickler(buffer, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def cifar_row(image_hwc: np.ndarray) -> np.ndarray:
    """The CIFAR row of an (32, 32, 3) image: the red plane, then green, then blue, row-major."""
    return np.concatenate([image_hwc[:, :, c].ravel() for c in range(3)])


def write_fake_cifar(root: Path, folder: str, batches: dict[str, int], label_key: bytes, num_classes: int, seed=0):
    """Tiny CIFAR batches; returns {batch name: (images HWC, labels)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for batch_name, count in batches.items():
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        labels = [int(y) for y in rng.integers(0, num_classes, count)]
        content = {
            b"batch_label": b"fake " + batch_name.encode(),
            b"data": np.stack([cifar_row(im) for im in images]),
            label_key: labels,
            b"filenames": [f"{i}.png".encode() for i in range(count)],
        }
        if label_key == b"fine_labels":
            content[b"coarse_labels"] = [num_classes + 1] * count  # must not be used
        write_py2_pickle(root / folder / batch_name, content)
        written[batch_name] = (images, labels)
    return written


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(raw)
    else:
        path.write_bytes(raw)


def write_fake_mnist(root: Path, compress: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", 12), ("t10k", 5)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(root / f"MNIST/raw/{split}-images-idx3-ubyte{suffix}", images, 2051, compress)
        write_idx(root / f"MNIST/raw/{split}-labels-idx1-ubyte{suffix}", labels, 2049, compress)
        arrays[split] = (images, labels)
    return arrays


# --------------------------------------------------------------------------- registry and roots


def test_registry_describes_every_dataset():
    expected = {
        "digits": (10, 1, 8, "digits"),
        "mnist": (10, 1, 28, "mnist"),
        "fashion_mnist": (10, 1, 28, "fashion_mnist"),
        "cifar10": (10, 3, 32, "cifar10"),
        "cifar100": (100, 3, 32, "cifar100"),
        "cifar10n": (10, 3, 32, "cifar10"),
        "cifar100n": (100, 3, 32, "cifar100"),
        "webvision": (50, 3, 224, "webvision"),
        "clothing1m": (14, 3, 224, "clothing1m"),
        "svhn": (10, 3, 32, "svhn"),
    }
    got = {k: (v.num_classes, v.in_channels, v.image_size, v.recipe) for k, v in DATASETS.items()}
    assert got == expected
    assert "CIFAR-N/CIFAR-10_human.npz" in DATASETS["cifar10n"].required
    assert "CIFAR-N/CIFAR-100_human.npz" in DATASETS["cifar100n"].required


def test_cifar100_class_names_are_the_100_fine_labels_in_alphabetical_order():
    names = data.CIFAR100_NAMES
    assert len(set(names)) == 100 and list(names) == sorted(names)
    assert names[0] == "apple" and names[-1] == "worm"


def test_resolve_data_root_prefers_cli_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DRAINAGE_BENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DRAINAGE_BENCH_DATA")
    assert resolve_data_root(None) == Path("data")


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(UserError, match=r"unknown dataset 'cifar11'.*cifar10, cifar100"):
        load_dataset("cifar11", Path("."))
    with pytest.raises(UserError, match="unknown dataset"):
        dataset_status("cifar11", Path("."))


def test_missing_root_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"data root {missing} does not exist"):
        load_dataset("mnist", missing)
    assert dataset_status("mnist", missing) == (False, f"data root {missing} does not exist")


def test_wrong_layout_names_the_missing_path(tmp_path):
    arrays_root = tmp_path / "elsewhere"
    write_fake_mnist(arrays_root)
    for f in (arrays_root / "MNIST/raw").iterdir():  # files directly in the root: wrong layout
        f.rename(tmp_path / f.name)
    expected = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    with pytest.raises(UserError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert message.startswith(f"{expected} not found;") and "--data-root" in message and "--download" in message
    assert "\n" not in message
    assert dataset_status("mnist", tmp_path) == (False, f"missing {expected}")


def test_download_refused_for_datasets_without_a_downloader(tmp_path):
    with pytest.raises(UserError, match="webvision cannot be downloaded automatically"):
        load_dataset("webvision", tmp_path, download=True)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_values_and_split():
    digits = load_dataset("digits", Path("/definitely/not/a/folder"))  # needs no files
    assert isinstance(digits, TensorData)
    assert digits.train_images.shape == (1257, 1, 8, 8) and digits.test_images.shape == (540, 1, 8, 8)
    assert digits.train_images.dtype == torch.uint8 and digits.train_labels.dtype == torch.int64
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    # The two splits together are exactly sklearn's images scaled by 255/16, each image once.
    bunch = load_digits()
    expected = np.rint(bunch.images * 255 / 16).astype(np.uint8).reshape(len(bunch.images), -1)
    got = torch.cat([digits.train_images, digits.test_images]).reshape(1797, -1).numpy()
    got_labels = torch.cat([digits.train_labels, digits.test_labels]).numpy()
    key = lambda rows, labels: sorted(r.tobytes() + bytes([y]) for r, y in zip(rows, labels))  # noqa: E731
    assert key(got, got_labels) == key(expected, bunch.target)
    # Stratified: every class's share of the test set is 540/1797 of it, to within one image.
    class_sizes = np.bincount(bunch.target)
    test_counts = np.bincount(digits.test_labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - class_sizes * 540 / 1797) <= 1)
    # mean / std describe the training images scaled to [0, 1].
    scaled = digits.train_images.double() / 255
    assert digits.mean[0] == pytest.approx(scaled.mean().item(), abs=1e-9)
    assert digits.std[0] == pytest.approx(scaled.std(unbiased=False).item(), abs=1e-9)


def test_digits_is_deterministic(tmp_path):
    first = load_dataset("digits", tmp_path / "a")
    second = load_dataset("digits", tmp_path / "b")  # a different cache key: loaded again
    assert first is not second
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert load_dataset("digits", tmp_path / "a") is first  # cached


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


def test_mnist_real_files(data_root):
    for name in DATASETS["mnist"].required:
        require_file(data_root / name)
    mnist = load_dataset("mnist", data_root)
    assert mnist.train_images.shape == (60000, 1, 28, 28) and mnist.test_images.shape == (10000, 1, 28, 28)
    assert mnist.train_labels.bincount().tolist() == MNIST_TRAIN_COUNTS
    assert len(mnist.test_labels) == 10000
    assert mnist.mean[0] == pytest.approx(0.1307, abs=5e-5)
    assert mnist.std[0] == pytest.approx(0.3081, abs=5e-5)


def test_fashion_mnist_real_files(data_root):
    for name in DATASETS["fashion_mnist"].required:
        require_file(data_root / name)
    fashion = load_dataset("fashion_mnist", data_root)
    assert fashion.train_images.shape == (60000, 1, 28, 28) and fashion.test_images.shape == (10000, 1, 28, 28)
    assert fashion.train_labels.bincount().tolist() == [6000] * 10
    assert fashion.test_labels.bincount().tolist() == [1000] * 10
    assert fashion.class_names[0] == "T-shirt/top" and fashion.class_names[9] == "Ankle boot"


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_fake_files_gz_or_unpacked(tmp_path, compress):
    arrays = write_fake_mnist(tmp_path, compress=compress)
    before = sorted(p.name for p in (tmp_path / "MNIST/raw").iterdir())
    mnist = load_dataset("mnist", tmp_path)
    assert np.array_equal(mnist.train_images[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(mnist.test_labels.numpy(), arrays["t10k"][1])
    assert sorted(p.name for p in (tmp_path / "MNIST/raw").iterdir()) == before  # nothing unpacked
    assert dataset_status("mnist", tmp_path)[0]


def test_mnist_bad_magic_number_is_a_user_error(tmp_path):
    write_fake_mnist(tmp_path)
    bad = tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros(5), 2051, compress=True)  # an image magic on a label file
    with pytest.raises(UserError, match=f"{bad} is not an IDX file with magic number 2049"):
        load_dataset("mnist", tmp_path)


def test_mnist_truncated_file_is_a_user_error(tmp_path):
    write_fake_mnist(tmp_path)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(UserError, match=f"{path} has .* data bytes"):
        load_dataset("mnist", tmp_path)


def test_mnist_label_count_mismatch_is_a_user_error(tmp_path):
    write_fake_mnist(tmp_path)
    path = tmp_path / "MNIST/raw/train-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(11), 2049, compress=True)
    with pytest.raises(UserError, match="holds 11 labels for 12 images"):
        load_dataset("mnist", tmp_path)


# --------------------------------------------------------------------------- CIFAR


CIFAR10_BATCHES = {**{f"data_batch_{i}": 2 + i for i in range(1, 6)}, "test_batch": 4}


def test_cifar10_layout_pixel_order_and_labels(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_BATCHES, b"labels", 10)
    cifar = load_dataset("cifar10", tmp_path)
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    expected_train = np.concatenate([written[n][0] for n in train_names]).transpose(0, 3, 1, 2)  # HWC -> CHW
    assert cifar.train_images.shape == (sum(2 + i for i in range(1, 6)), 3, 32, 32)
    assert np.array_equal(cifar.train_images.numpy(), expected_train)
    assert cifar.train_labels.tolist() == sum((written[n][1] for n in train_names), [])
    assert np.array_equal(cifar.test_images.numpy(), written["test_batch"][0].transpose(0, 3, 1, 2))
    assert cifar.test_labels.tolist() == written["test_batch"][1]
    assert cifar.class_names[0] == "airplane" and cifar.num_classes == 10
    red_mean = expected_train[:, 0].astype(np.float64).mean() / 255
    assert cifar.mean[0] == pytest.approx(red_mean, abs=1e-12)


def test_cifar100_uses_fine_labels(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar-100-python", {"train": 6, "test": 3}, b"fine_labels", 100)
    cifar = load_dataset("cifar100", tmp_path)
    assert cifar.train_labels.tolist() == written["train"][1]
    assert cifar.test_labels.tolist() == written["test"][1]
    assert np.array_equal(cifar.test_images.numpy(), written["test"][0].transpose(0, 3, 1, 2))
    assert cifar.num_classes == 100


def test_cifar10n_needs_the_human_label_file_npz_or_pt(tmp_path):
    written = write_fake_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_BATCHES, b"labels", 10)
    expected = tmp_path / "CIFAR-N/CIFAR-10_human.npz"
    with pytest.raises(UserError) as info:
        load_dataset("cifar10n", tmp_path)
    assert str(info.value).startswith(f"{expected} not found;")
    assert "--download" not in str(info.value)  # CIFAR-N cannot be fetched
    (tmp_path / "CIFAR-N").mkdir()
    (tmp_path / "CIFAR-N/CIFAR-10_human.pt").write_bytes(b"labels")
    assert dataset_status("cifar10n", tmp_path)[0]
    cifar10n = load_dataset("cifar10n", tmp_path)
    assert cifar10n.name == "cifar10n"
    # the clean labels, as written into the five training batches
    assert cifar10n.train_labels.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])


class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_cifar_pickle_is_refused(tmp_path):
    write_fake_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_BATCHES, b"labels", 10)
    marker = tmp_path / "pwned"
    evil = tmp_path / "cifar-10-batches-py/data_batch_3"
    evil.write_bytes(pickle.dumps({b"data": _RunsShellCommand(f"touch {marker}"), b"labels": [0]}))
    with pytest.raises(UserError, match=f"{evil} is not a readable CIFAR batch.*refused global"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        ({b"data": np.zeros((2, 3072), np.uint8)}, "is not a CIFAR batch"),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "shape"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "holds 1 labels for 2 images"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"labels outside 0\.\.9"),
    ],
)
def test_malformed_cifar_batch_is_a_user_error(tmp_path, content, problem):
    write_fake_cifar(tmp_path, "cifar-10-batches-py", CIFAR10_BATCHES, b"labels", 10)
    bad = tmp_path / "cifar-10-batches-py/test_batch"
    write_py2_pickle(bad, content)
    with pytest.raises(UserError, match=problem) as info:
        load_dataset("cifar10", tmp_path)
    assert str(info.value).startswith(str(bad))


def test_cifar_file_that_is_not_a_pickle_is_a_user_error(tmp_path):
    write_fake_cifar(tmp_path, "cifar-100-python", {"train": 2, "test": 2}, b"fine_labels", 100)
    (tmp_path / "cifar-100-python/train").write_bytes(b"not a pickle at all")
    with pytest.raises(UserError, match="is not a readable CIFAR batch"):
        load_dataset("cifar100", tmp_path)


# --------------------------------------------------------------------------- image folders


def write_two_colour_image(path: Path, left, right, size=(40, 30)) -> None:
    """An image whose left half is one colour and right half another."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def test_webvision_fake_folder(tmp_path):
    base = tmp_path / "webvision"
    (base / "info").mkdir(parents=True)
    (base / "info/train_filelist_google.txt").write_text(
        "google/q0001/a.jpg 0\ngoogle/q0051/b.jpg 50\ngoogle/q0002/c.png 1\n"
    )
    (base / "info/val_filelist.txt").write_text("val000001.jpg 49\nval000002.jpg 999\n")
    write_two_colour_image(base / "google/q0001/a.jpg", RED, BLUE)
    write_two_colour_image(base / "google/q0002/c.png", GREEN, RED, size=(30, 50))
    write_two_colour_image(base / "val_images_256/val000001.jpg", BLUE, GREEN)
    webvision = load_dataset("webvision", tmp_path)
    assert isinstance(webvision, StreamData)
    assert webvision.train_labels.tolist() == [0, 1] and webvision.test_labels.tolist() == [49]
    assert len(webvision.train) == 2 and len(webvision.test) == 1 and webvision.num_classes == 50
    first = webvision.train[0]
    assert first.shape == (3, 224, 224) and first.dtype == torch.uint8
    assert first[:, 112, 10].tolist() == pytest.approx(list(RED), abs=8)  # JPEG: nearly exact
    assert first[:, 112, 213].tolist() == pytest.approx(list(BLUE), abs=8)
    tall = webvision.train[1]  # 30x50 -> 256x427 -> center 224x224
    assert tall.shape == (3, 224, 224)
    assert tall[:, 5, 5].tolist() == list(GREEN) and tall[:, 5, 218].tolist() == list(RED)


def test_clothing1m_fake_folder(tmp_path):
    notes = tmp_path / "clothing1m/annotations"
    notes.mkdir(parents=True)
    (notes / "noisy_label_kv.txt").write_text("images/0/00/a.jpg 3\nimages/0/00/b.jpg 13\nimages/0/01/z.jpg 1\n")
    (notes / "clean_label_kv.txt").write_text("images/5/00/t.jpg 7\nimages/0/00/a.jpg 4\n")
    (notes / "noisy_train_key_list.txt").write_text("images/0/00/b.jpg\nimages/0/00/a.jpg\n")
    (notes / "clean_val_key_list.txt").write_text("images/0/00/a.jpg\n")
    (notes / "clean_test_key_list.txt").write_text("images/5/00/t.jpg\n")
    for key in ("0/00/a.jpg", "0/00/b.jpg", "5/00/t.jpg"):
        write_two_colour_image(tmp_path / "clothing1m/images" / key, RED, RED)
    clothing = load_dataset("clothing1m", tmp_path)
    assert clothing.train_labels.tolist() == [13, 3]  # noisy labels, in key-list order
    assert clothing.test_labels.tolist() == [7]  # clean label
    assert clothing.evals["val"][1].tolist() == [4]  # the clean label of a.jpg, not its noisy 3
    assert clothing.num_classes == 14 and len(clothing.class_names) == 14
    image = clothing.test[0]
    assert image.shape == (3, 224, 224)
    assert image.float().mean(dim=(1, 2)).tolist() == pytest.approx([255, 0, 0], abs=8)


def test_clothing1m_key_without_label_is_a_user_error(tmp_path):
    notes = tmp_path / "clothing1m/annotations"
    notes.mkdir(parents=True)
    for name in ("noisy_label_kv.txt", "clean_label_kv.txt"):
        (notes / name).write_text("images/0/00/a.jpg 3\n")
    (notes / "noisy_train_key_list.txt").write_text("images/0/00/a.jpg\nimages/0/00/lost.jpg\n")
    (notes / "clean_val_key_list.txt").write_text("images/0/00/a.jpg\n")
    (notes / "clean_test_key_list.txt").write_text("images/0/00/a.jpg\n")
    with pytest.raises(UserError, match="has no label for images/0/00/lost.jpg"):
        load_dataset("clothing1m", tmp_path)


def test_image_folder_list_with_a_bad_line_is_a_user_error(tmp_path):
    info = tmp_path / "webvision/info"
    info.mkdir(parents=True)
    (info / "train_filelist_google.txt").write_text("google/a.jpg zero\n")
    (info / "val_filelist.txt").write_text("")
    with pytest.raises(UserError, match="line 1 is not '<path> <label>'"):
        load_dataset("webvision", tmp_path)


# --------------------------------------------------------------------------- stratified split


def test_stratified_split_proportions_per_class():
    labels = np.repeat([0, 1, 2], [50, 100, 150])
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]
    train_idx, val_idx = stratified_split(torch.from_numpy(labels), val_fraction=0.2, seed=3)
    assert train_idx.dtype == np.int64 and val_idx.dtype == np.int64
    assert np.all(np.diff(train_idx) > 0) and np.all(np.diff(val_idx) > 0)
    assert np.array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(300))
    assert np.bincount(labels[val_idx]).tolist() == [10, 20, 30]
    assert np.bincount(labels[train_idx]).tolist() == [40, 80, 120]


def test_stratified_split_is_deterministic_per_seed():
    labels = np.arange(200) % 4
    first = stratified_split(labels, 0.25, seed=7)
    again = stratified_split(labels, 0.25, seed=7)
    other = stratified_split(labels, 0.25, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_stratified_split_rejects_bad_fractions(fraction):
    with pytest.raises(UserError, match="val_fraction"):
        stratified_split(np.arange(10) % 2, fraction)
