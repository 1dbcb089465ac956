"""WebVision (+ ILSVRC2012 validation) and Clothing1M: layouts, crops, augmentations, sampling,
pretrained weights and short `drainage-bench train` runs, on tiny generated folders of real JPEGs."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from drainage_bench.config import build_config
from drainage_bench.errors import UserError
from drainage_bench.trainer import augment, stream
from drainage_bench.trainer.data import load_dataset
from drainage_bench.trainer.loop import prepare, summarize
from drainage_bench.trainer.sampling import balanced_order, epoch_orders

# 60 made-up WordNet ids, deliberately *not* in sorted order: class i is line i, whatever its id.
SYNSETS = [f"n{(7919 * i) % 100003:08d}" for i in range(1, 1001)]


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    """A real JPEG (torchvision.io.encode_jpeg) of random blocks, width x height = size."""
    from torchvision.io import encode_jpeg

    width, height = size
    blocks = torch.randint(0, 256, (3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    image = blocks.repeat_interleave(-(-height // 4), 1).repeat_interleave(-(-width // 4), 2)[:, :height, :width]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image.contiguous(), quality=90).numpy().tobytes())


def write_webvision(root: Path, train: list[tuple[str, int]], val: list[tuple[str, int]]) -> None:
    """info/ lists and synsets.txt; image files only for the entries of classes 0..49."""
    info = root / "webvision/info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "synsets.txt").write_text("".join(f"{s} made-up class {i}\n" for i, s in enumerate(SYNSETS)))
    (info / "train_filelist_google.txt").write_text("".join(f"{p} {y}\n" for p, y in train))
    (info / "val_filelist.txt").write_text("".join(f"{p} {y}\n" for p, y in val))
    for n, (p, y) in enumerate(train):
        if y < 50:
            write_jpeg(root / "webvision" / p, n, (50, 40) if n % 2 else (36, 48))
    for n, (p, y) in enumerate(val):
        if y < 50:
            write_jpeg(root / "webvision/val_images_256" / p, 100 + n)


def tiny_webvision(root: Path, labels: list[int]) -> list[int]:
    """Training labels in the given (unsorted) order, 4 validation images; returns the kept labels."""
    train = [(f"google/q{y + 1:04d}/{n}.jpg", y) for n, y in enumerate(labels)]
    write_webvision(root, train, [(f"val{n:06d}.jpg", y) for n, y in enumerate([2, 0, 49, 700])])
    return [y for y in labels if y < 50]


def write_clothing1m(root: Path, noisy: dict[str, int], clean: dict[str, int], train: list[str], val: list[str],
                     test: list[str]) -> None:
    notes = root / "clothing1m/annotations"
    notes.mkdir(parents=True, exist_ok=True)
    for name, table in (("noisy_label_kv.txt", noisy), ("clean_label_kv.txt", clean)):
        (notes / name).write_text("".join(f"{k} {y}\n" for k, y in table.items()))
    for name, keys in (("noisy_train_key_list.txt", train), ("clean_val_key_list.txt", val),
                       ("clean_test_key_list.txt", test)):
        (notes / name).write_text("".join(f"{k}\n" for k in keys))
    for n, key in enumerate(dict.fromkeys(train + val + test)):
        write_jpeg(root / "clothing1m" / key, n)


def tiny_clothing1m(root: Path) -> None:
    """12 noisy training images (labels 0, 1, 2, four each), 4 clean validation, 3 clean test."""
    train = [f"images/0/{n:02d}/{n}.jpg" for n in range(12)]
    val = [f"images/1/00/v{n}.jpg" for n in range(4)]
    test = [f"images/2/00/t{n}.jpg" for n in range(3)]
    noisy = {k: n % 3 for n, k in enumerate(train)} | {val[0]: 9}
    clean = {k: (n + 1) % 3 for n, k in enumerate(val)} | {k: n for n, k in enumerate(test)} | {train[0]: 13}
    write_clothing1m(root, noisy, clean, train, val, test)


# --------------------------------------------------------------------------- layouts


def test_webvision_keeps_the_entries_labelled_below_50_from_an_unsorted_list(tmp_path: Path) -> None:
    # Labels in no order, with classes >= 50 (dropped; their files need not exist) between them.
    kept = tiny_webvision(tmp_path, [7, 51, 0, 49, 999, 3, 50, 0, 12])
    assert kept == [7, 0, 49, 3, 0, 12]
    data = load_dataset("webvision", tmp_path)
    assert data.train_labels.tolist() == [7, 0, 49, 3, 0, 12]  # list order, written out by hand
    assert [p.name for p in data.train.paths] == ["0.jpg", "2.jpg", "3.jpg", "5.jpg", "7.jpg", "8.jpg"]
    assert data.test_labels.tolist() == [2, 0, 49]  # 700 dropped
    assert data.num_classes == 50 and data.class_names[:2] == tuple(SYNSETS[:2])
    assert "imagenet" not in data.evals  # no imagenet/ folder: WebVision's own validation only
    assert data.train[1].shape == (3, 224, 224)


def _meta_mat(path: Path, ids_to_wnids: dict[int, str]) -> None:
    """The devkit's meta.mat: a struct array synsets(ILSVRC2012_ID, WNID, num_children)."""
    import scipy.io

    table = np.zeros(len(ids_to_wnids), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (i, wnid) in enumerate(ids_to_wnids.items()):
        table[row] = (i, wnid, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": table})


def test_ilsvrc2012_validation_images_take_the_webvision_class_of_their_synset(tmp_path: Path) -> None:
    tiny_webvision(tmp_path, [0, 1])
    # Layout 1: imagenet/val/<wnid>/ folders; class i = line i of synsets.txt.
    for label, count in ((0, 2), (1, 1), (49, 1)):
        for n in range(count):
            write_jpeg(tmp_path / "imagenet/val" / SYNSETS[label] / f"ILSVRC2012_val_{label:04d}{n}.JPEG", n)
    for label in range(2, 49):
        (tmp_path / "imagenet/val" / SYNSETS[label]).mkdir(parents=True)
    write_jpeg(tmp_path / "imagenet/val" / SYNSETS[55] / "x.JPEG", 1)  # class 55: not among the 50
    data = load_dataset("webvision", tmp_path)
    files, labels = data.evals["imagenet"]
    assert labels.tolist() == [0, 0, 1, 49]
    assert [p.parent.name for p in files.paths] == [SYNSETS[0], SYNSETS[0], SYNSETS[1], SYNSETS[49]]

    # Layout 2: the flat folder, the devkit's ground truth (ILSVRC2012_IDs) and meta.mat (ID -> WNID).
    flat = tmp_path / "flat"
    tiny_webvision(flat, [0, 1])
    # ILSVRC2012_IDs unrelated to WebVision's order: ID 10 + i is the synset of class (i * 7) % 60.
    ids = {10 + i: SYNSETS[(i * 7) % 60] for i in range(60)}
    devkit = flat / "imagenet/ILSVRC2012_devkit_t12/data"
    _meta_mat(devkit / "meta.mat", ids)
    truth = [10 + 0, 10 + 1, 10 + 7, 10 + 8]  # classes 0, 7, 49, 56 (56: not among the 50)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in truth))
    for n in (1, 2, 3):  # image 4 (class 56) need not exist
        write_jpeg(flat / f"imagenet/ILSVRC2012_img_val/ILSVRC2012_val_{n:08d}.JPEG", n)
    files, labels = load_dataset("webvision", flat).evals["imagenet"]
    assert labels.tolist() == [0, 7, 49]
    assert [p.name for p in files.paths] == [f"ILSVRC2012_val_{n:08d}.JPEG" for n in (1, 2, 3)]


def test_clothing1m_validation_is_the_clean_validation_keys(tmp_path: Path) -> None:
    tiny_clothing1m(tmp_path)
    data = load_dataset("clothing1m", tmp_path)
    assert data.train_labels.tolist() == [0, 1, 2] * 4  # noisy labels
    files, labels = data.evals["val"]
    assert labels.tolist() == [1, 2, 0, 1]  # clean labels ((n + 1) % 3), not the noisy 9 of v0
    assert [p.name for p in files.paths] == ["v0.jpg", "v1.jpg", "v2.jpg", "v3.jpg"]
    config = build_config("clothing1m", "ce", {"pretrained": None, "data_root": str(tmp_path)})
    prepared = prepare(config, torch.device("cpu"))
    assert set(prepared.evals) == {"test", "val"} and prepared.evals["val"][2] == 4
    assert prepared.evals["val"][1].tolist() == [1, 2, 0, 1]
    # Selection: the test accuracy of the epoch with the best validation accuracy (the first of
    # ties), and the last epoch's.
    epochs = [{"epoch": 1, "val_acc": 0.50, "test_acc": 0.70}, {"epoch": 2, "val_acc": 0.75, "test_acc": 0.40},
              {"epoch": 3, "val_acc": 0.75, "test_acc": 0.90}, {"epoch": 4, "val_acc": 0.25, "test_acc": 0.80}]
    s = summarize(epochs)
    assert (s["best_val_epoch"], s["test_acc_at_best_val"], s["final_test_acc"]) == (2, 0.40, 0.80)


def test_imagenet_folder_without_either_layout_is_one_line_naming_both(tmp_path: Path) -> None:
    tiny_webvision(tmp_path, [0, 1])
    write_jpeg(tmp_path / "imagenet/by_index/0/x.JPEG", 0)  # neither val/ nor ILSVRC2012_img_val/
    with pytest.raises(UserError) as err:
        load_dataset("webvision", tmp_path)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert f"{tmp_path / 'imagenet'} has neither val/<wnid>/*.JPEG nor ILSVRC2012_img_val/" in message


def test_imagenet_val_folders_give_only_their_image_files(tmp_path: Path) -> None:
    tiny_webvision(tmp_path, [0, 1])
    for label in range(50):
        (tmp_path / "imagenet/val" / SYNSETS[label]).mkdir(parents=True)
    class0 = tmp_path / "imagenet/val" / SYNSETS[0]
    for n, name in enumerate(["b.jpg", "a.JPEG", "c.PNG", "d.JpEg", ".hidden.JPEG", "._a.JPEG", "sub.JPEG/e.JPEG"]):
        write_jpeg(class0 / name, n)
    (class0 / "notes.txt").write_text("not an image\n")
    (class0 / "empty").mkdir()
    files, labels = load_dataset("webvision", tmp_path).evals["imagenet"]
    assert [p.name for p in files.paths] == ["a.JPEG", "b.jpg", "c.PNG", "d.JpEg"]  # sorted; no dotfile, folder, .txt
    assert labels.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("problem", ["missing list", "missing image", "label outside the classes"])
def test_bad_layout_is_one_line_naming_the_file_exit_2_nothing_written(tmp_path: Path, problem: str, monkeypatch,
                                                                       capsys) -> None:
    if problem == "label outside the classes":
        tiny_clothing1m(tmp_path)
        notes = tmp_path / "clothing1m/annotations"
        text = (notes / "noisy_label_kv.txt").read_text().replace("images/0/05/5.jpg 2", "images/0/05/5.jpg 14")
        (notes / "noisy_label_kv.txt").write_text(text)
        dataset, named = "clothing1m", "noisy_label_kv.txt gives images/0/05/5.jpg the label 14, outside the classes 0..13"
    else:
        dataset = "webvision"
        tiny_webvision(tmp_path, [0, 1, 2])
        if problem == "missing list":
            (tmp_path / "webvision/info/val_filelist.txt").unlink()
            named = "webvision/info/val_filelist.txt not found"
        else:
            (tmp_path / "webvision/google/q0002/1.jpg").unlink()
            named = "webvision/google/q0002/1.jpg not found (listed in train_filelist_google.txt)"
    from drainage_bench import cli

    # The console script in this process (a subprocess costs seconds of imports): exit status and stderr.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["drainage-bench", "train", "--dataset", dataset, "--data-root", str(tmp_path),
                                      "--results", "results", "--set", "pretrained=none"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- crops and augmentations


@pytest.mark.parametrize("height, width", [(30, 40), (375, 500), (500, 120), (64, 640)])
def test_random_resized_box_draws_what_torchvision_draws_for_the_same_seed(height: int, width: int) -> None:
    from torchvision.transforms import RandomResizedCrop

    image = torch.zeros(3, height, width)
    for seed in range(40):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(image, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3])
        assert stream.random_resized_box(height, width, torch.Generator().manual_seed(seed)) == tuple(expected)


def test_views_are_224_uint8_whatever_the_image_size() -> None:
    from drainage_bench.trainer.data import ImageFiles

    files, square = ImageFiles([]), ImageFiles([], square=True)
    for size in ((30, 40), (500, 375), (600, 90)):
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
        for crop in stream.CROPS:
            out = stream.view(image, crop, 3, files)
            assert out.shape == (3, 224, 224) and out.dtype == torch.uint8, (size, crop)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert torch.equal(stream.view(image, "random_resized", 3, files), stream.view(image, "random_resized", 3, files))
    assert not torch.equal(stream.view(image, "random_resized", 3, files),
                           stream.view(image, "random_resized", 4, files))
    assert torch.equal(stream.view(image, "random_resized", stream.NO_SEED, files), stream.view(image, "center", 9, files))
    # the center view is the files' own: Clothing1M's squashes to 256x256 before the crop
    assert torch.equal(stream.view(image, "center", 9, square), square.center(image))
    assert not torch.equal(square.center(image), files.center(image))


def test_color_jitter_is_torchvision_colorjitter_per_image() -> None:
    from torchvision.transforms.v2 import functional as TF

    images = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    out = augment.color_jitter(images, torch.Generator().manual_seed(7))
    # The same draws, read in the documented layout: 4 uniform factors, then a random order.
    g = torch.Generator().manual_seed(7)
    u = torch.rand(6, 4, generator=g)
    order = torch.rand(6, 4, generator=g).argsort(1)
    ops = [lambda x, f: TF.adjust_brightness(x, 0.6 + 0.8 * f), lambda x, f: TF.adjust_contrast(x, 0.6 + 0.8 * f),
           lambda x, f: TF.adjust_saturation(x, 0.6 + 0.8 * f), lambda x, f: TF.adjust_hue(x, -0.2 + 0.4 * f)]
    for b in range(6):
        expected = images[b]
        for k in order[b].tolist():
            expected = ops[k](expected, u[b, k].item())
        torch.testing.assert_close(out[b], expected, atol=2e-5, rtol=0)
    assert sorted(order[0].tolist()) == [0, 1, 2, 3]


def test_cutout_fills_one_clipped_square_per_image_with_the_mean_colour() -> None:
    images = torch.full((48, 3, 64, 64), 2.0)  # 2: no fill value; side 64 -> holes of 32 (112 at 224)
    out = augment.cutout(images, torch.Generator().manual_seed(1))
    mean = torch.tensor(augment.CUTOUT_FILL).view(3, 1)
    sides = []
    for b in range(48):
        hole = out[b, 0] != 2.0
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        # a rectangle: every pixel in its bounding box is filled, nothing outside
        assert hole.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert 16 <= len(rows) <= 32 and 16 <= len(cols) <= 32  # centre inside: at least half a side
        assert torch.allclose(out[b][:, hole], mean.expand(3, int(hole.sum())))
        sides.append((len(rows), len(cols)))
    assert (32, 32) in sides and any(s != (32, 32) for s in sides)  # whole squares and clipped ones
    assert int(augment.CUTOUT_FRACTION * 224) == 112
    assert torch.equal(out, augment.cutout(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, augment.cutout(images, torch.Generator().manual_seed(2)))


def test_streamed_training_views_depend_on_the_seed_not_on_the_workers(tmp_path: Path) -> None:
    from drainage_bench.trainer.data import ImageFiles

    paths = []
    for n in range(6):
        paths.append(tmp_path / f"{n}.jpg")
        write_jpeg(paths[-1], n, (60 + 10 * n, 48))
    files, order = ImageFiles(paths), torch.tensor([4, 0, 5, 1, 3, 2])

    def passes(workers: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = stream.StreamBatches(files, np.arange(6), torch.device("cpu"), persistent=workers > 0,
                                       crop="random_resized", seed=seed, workers=workers)
        return [torch.cat([im for _, im in batches(order, 4, train=True)]) for _ in range(2)] + [
            torch.cat([im for _, im in batches(order, 4)])]

    first, second, evaluation = passes(0, 5)
    assert first.shape == (6, 3, 224, 224)
    assert not torch.equal(first, second)  # each pass draws new crops
    with_workers = passes(2, 5)
    assert all(torch.equal(a, b) for a, b in zip((first, second, evaluation), with_workers))
    assert not torch.equal(passes(0, 6)[0], first)
    center = torch.stack([files[i] for i in order.tolist()])
    assert torch.equal(evaluation, center)  # evaluation: the center view


def test_clothing1m_views_squash_to_256x256_webvision_keeps_the_aspect_ratio(tmp_path: Path) -> None:
    """Clothing1M: torchvision's Resize((256, 256)) + CenterCrop(224), as the drainage code's
    Clothing1MDatasetLoader, for evaluation and training (train_crop=center) alike; WebVision:
    Resize(256) (short side) + CenterCrop(224). A 300x200 image, where the two differ. Exact against
    torchvision.transforms.v2 (uint8 kernels, as the views use); torchvision.transforms (v1, through
    float) rounds some pixels the other way, and PIL (the reference's images) filters a little
    differently: both within tolerances."""
    from torchvision import transforms as T1
    from torchvision.io import decode_image
    from torchvision.transforms import v2 as T

    def squashed(image, T=T):
        return T.CenterCrop(224)(T.Resize((256, 256), antialias=True)(image))

    def short_side(image):
        return T.CenterCrop(224)(T.Resize(256, antialias=True)(image))

    tiny_clothing1m(tmp_path / "c")
    train_key, test_key = tmp_path / "c/clothing1m/images/0/00/0.jpg", tmp_path / "c/clothing1m/images/2/00/t0.jpg"
    write_jpeg(train_key, 1, (300, 200))
    write_jpeg(test_key, 2, (300, 200))
    data = load_dataset("clothing1m", tmp_path / "c")
    assert data.train.square and data.test.square and data.evals["val"][0].square
    image = decode_image(str(test_key))
    assert image.shape == (3, 200, 300)
    expected = squashed(image)
    assert expected.shape == (3, 224, 224) and not torch.equal(expected, short_side(image))
    assert torch.equal(data.test[0], expected)
    for on_device in (False, True):  # the workers' views, and the nvJPEG branch's (decode_jpeg on the CPU)
        batches = stream.StreamBatches(data.test, np.arange(3), torch.device("cpu"), persistent=False, workers=0,
                                       decode_on_device=on_device)
        assert torch.equal(torch.cat([im for _, im in batches(torch.arange(3), 2)])[0], expected)
        train = stream.StreamBatches(data.train, np.arange(12), torch.device("cpu"), persistent=False, crop="center",
                                     workers=0, decode_on_device=on_device)
        assert torch.equal(next(iter(train(torch.tensor([0]), 1, train=True)))[1][0], squashed(decode_image(str(train_key))))
    assert (squashed(image, T1).int() - expected.int()).abs().max() <= 1
    from PIL import Image

    with Image.open(test_key) as pil:  # the reference's pipeline: PIL image, v1 transforms
        reference = T1.functional.pil_to_tensor(squashed(pil.convert("RGB"), T1))
    assert reference.shape == expected.shape and (reference.float() - expected.float()).abs().mean() < 2

    tiny_webvision(tmp_path / "w", [0, 1])
    val_image = tmp_path / "w/webvision/val_images_256/val000000.jpg"
    write_jpeg(val_image, 3, (300, 200))
    data = load_dataset("webvision", tmp_path / "w")
    assert not (data.train.square or data.test.square)
    image = decode_image(str(val_image))
    assert torch.equal(data.test[0], short_side(image)) and not torch.equal(data.test[0], squashed(image))


# --------------------------------------------------------------------------- sampling


def test_balanced_subsample_draws_n_per_class_anew_each_epoch() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 7 + [3] * 3)  # class 4: no samples, skipped
    orders = epoch_orders(labels, 5, 3, torch.Generator().manual_seed(0))
    epochs = [orders() for _ in range(4)]
    for order in epochs:
        assert torch.bincount(labels[order], minlength=5).tolist() == [3, 3, 3, 3, 0]
        assert len(set(order.tolist())) == 12  # without replacement
    assert len({tuple(sorted(o.tolist())) for o in epochs}) > 1  # a new subsample each epoch
    again = epoch_orders(labels, 5, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(o, again()) for o in epochs)  # the same per seed
    # every sample of a class with exactly n samples is always drawn
    assert all(set(range(22, 25)) <= set(o.tolist()) for o in epochs)
    with pytest.raises(UserError, match="balanced_subsample=4 is more than the 3 training samples labelled 3"):
        epoch_orders(labels, 4, 4, torch.Generator())
    full = epoch_orders(labels, 4, 0, torch.Generator().manual_seed(0))()
    assert sorted(full.tolist()) == list(range(25))
    # over many epochs every sample of the largest class is drawn about 3/10 of the time
    draws = torch.cat([balanced_order(labels, 3, 4, torch.Generator().manual_seed(s)) for s in range(2000)])
    share = torch.bincount(draws, minlength=25)[:10].float() / 2000
    assert torch.allclose(share, torch.full((10,), 0.3), atol=0.05)


# --------------------------------------------------------------------------- recipes, specs, weights


def test_recipes_are_the_reference_configs() -> None:
    wv = {loss: build_config("webvision", loss) for loss in ("ce", "gce", "sce", "nce_rce", "nce_agce", "anl_ce", "drainage")}
    ce = wv["ce"]
    assert (ce.model, ce.batch_size, ce.lr, ce.nesterov, ce.epochs, ce.grad_clip, ce.momentum) == ("resnet50", 512, 0.4, True, 250, 5.0, 0.9)
    assert (ce.schedule, ce.step_size, ce.step_gamma, ce.train_crop, ce.augment) == ("step", 1, 0.97, "random_resized", "flip_jitter")
    assert {k: (c.weight_decay, c.l1_delta) for k, c in wv.items()} == {
        "ce": (3e-5, 0), "gce": (3e-5, 0), "sce": (3e-5, 0), "nce_rce": (3e-5, 0), "nce_agce": (3e-5, 0),
        "anl_ce": (0, 5e-6), "drainage": (0, 1e-5)}
    assert wv["drainage"].params == {"alpha": 0.1, "beta": 10.0} and wv["nce_agce"].params == {"alpha": 50, "beta": 0.1, "a": 2.5, "q": 3}
    cl = {loss: build_config("clothing1m", loss) for loss in ("ce", "sce", "drainage")}
    c = cl["ce"]
    assert (c.batch_size, c.epochs, c.lr, c.schedule, c.step_size, c.step_gamma, c.weight_decay, c.nesterov) == (32, 15, 1e-3, "step", 10, 0.1, 1e-3, False)
    assert (c.pretrained, c.train_crop, c.augment) == ("pretrained/resnet50.pth", "center", "cutout")
    assert (cl["drainage"].lr, cl["drainage"].params, cl["drainage"].l1_delta) == (1e-4, {"alpha": 0.01, "beta": 100.0}, 0)
    # lr after 10 and 15 epochs of the recipes' schedules: 0.4 * 0.97**10; 1e-3 * 0.1 from epoch 11
    from drainage_bench.trainer.loop import make_optimizer, make_scheduler

    for config, after in ((ce, [0.4 * 0.97**k for k in range(12)]), (c, [1e-3] * 10 + [1e-4] * 2)):
        opt = make_optimizer(config, torch.nn.Linear(2, 2))
        sched, seen = make_scheduler(config, opt), []
        for _ in range(12):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert seen == pytest.approx(after) and opt.param_groups[0]["nesterov"] == config.nesterov


def test_real_noise_specs_have_the_paper_losses_times_3_seeds() -> None:
    from drainage_bench.sweeps.spec import load_spec

    for name in ("webvision", "clothing1m"):
        spec = load_spec(name)
        configs = spec.expand()
        assert len(configs) == 7 * 3 == len({c.trial_id for c in configs})  # 7 losses, no synthetic noise, 3 seeds
        assert [e.name for e in spec.losses] == ["ce", "gce", "sce", "nce_rce", "nce_agce", "anl_ce", "drainage"]
        assert spec.resources["gpus_per_trial"] == 1


def test_new_fields_at_their_defaults_keep_old_trial_ids() -> None:
    config = build_config("digits", "ce")  # its 0.1 trial_id is pinned in test_speed_options
    assert not {"nesterov", "train_crop", "balanced_subsample", "pretrained"} & set(config.canonical())
    assert config.replace(nesterov=True).trial_id != config.trial_id
    with pytest.raises(UserError, match="train_crop"):
        build_config("digits", "ce", {"train_crop": "random_resized"})
    with pytest.raises(UserError, match="nesterov"):
        build_config("digits", "ce", {"nesterov": True, "optimizer": "adam"})


def test_pretrained_weights_fill_everything_but_the_head(tmp_path: Path) -> None:
    import torchvision

    from drainage_bench.trainer.models import make_model
    from drainage_bench.trainer.pretrained import load_weights

    ours = make_model("resnet50", 14, 3, 224)
    reference = torchvision.models.resnet50(weights=None)  # a torchvision ImageNet state dict's keys
    reference.bn1.running_var.uniform_(0.5, 2)  # a buffer, not only parameters
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    weights = load_weights(build_config("clothing1m", "ce", {"pretrained": str(path)}))
    assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    head_before = ours.fc.linear.weight.clone()
    weights.apply(ours)
    assert torch.equal(ours.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(ours.bn1.running_var, reference.bn1.running_var)
    assert torch.equal(ours.fc.linear.weight, head_before)  # 1000-class head dropped, ours kept
    with pytest.raises(UserError, match="does not fit the model"):
        weights.apply(make_model("resnet18", 14, 3, 224))
    with pytest.raises(UserError, match="nothing.pth not found; the trial starts resnet50 from a state-dict file"):
        load_weights(build_config("clothing1m", "ce", {"pretrained": str(tmp_path / "nothing.pth")}))


# --------------------------------------------------------------------------- `drainage-bench train`


def _train(tmp_path: Path, dataset: str, *sets: str, monkeypatch=None) -> int:
    """`drainage-bench train` in this process (a subprocess costs seconds of imports); its exit status.

    cnn4 (two conv blocks, FC 128) instead of ResNet-50: a 224-px step in well under a second on a CPU.
    """
    from drainage_bench import cli

    argv = ["drainage-bench", "train", "--dataset", dataset, "--data-root", str(tmp_path / "data"),
            "--results", str(tmp_path / "results"), "--set", "model=cnn4", "--set", "batch_size=8",
            *[a for s in sets for a in ("--set", s)]]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code


def _record(tmp_path: Path):
    import pandas as pd

    (path,) = (tmp_path / "results/train/trials").glob("*.parquet")
    return pd.read_parquet(path).iloc[0]


@pytest.mark.slow
def test_train_webvision_scores_both_test_sets(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    tiny_webvision(data, [3, 0, 60, 1, 2, 0, 49, 1])
    for label in range(50):
        (data / "imagenet/val" / SYNSETS[label]).mkdir(parents=True)
    for n, label in enumerate((0, 1, 2, 3, 49)):
        write_jpeg(data / "imagenet/val" / SYNSETS[label] / f"{n}.JPEG", n)
    assert _train(tmp_path, "webvision", "epochs=1", monkeypatch=monkeypatch) == 0, capsys.readouterr()
    record = _record(tmp_path)
    assert (record["dataset"], record["train_crop"], record["augment"], record["nesterov"]) == (
        "webvision", "random_resized", "flip_jitter", True)
    assert record["final_test_acc"] * 3 == pytest.approx(round(record["final_test_acc"] * 3))  # of 3 images
    assert record["final_imagenet_acc"] * 5 == pytest.approx(round(record["final_imagenet_acc"] * 5))  # of 5
    assert 0 <= record["final_imagenet_acc"] <= 1 and record["status"] == "ok"


@pytest.mark.slow
def test_train_clothing1m_selects_on_clean_validation_from_named_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    from drainage_bench.trainer.models import ClassifierHead, make_model

    tiny_clothing1m(tmp_path / "data")
    model = make_model("cnn4", 14, 3, 224)
    head = next(n for n, m in model.named_modules() if isinstance(m, ClassifierHead))
    state = {k.replace(f"{head}.linear.", f"{head}."): v for k, v in model.state_dict().items()}  # a plain Linear head
    weights = tmp_path / "data/pretrained/cnn4.pth"
    weights.parent.mkdir()
    torch.save(state, weights)
    code = _train(tmp_path, "clothing1m", "epochs=2", "pretrained=pretrained/cnn4.pth", "balanced_subsample=2",
                  monkeypatch=monkeypatch)
    assert code == 0, capsys.readouterr()
    record = _record(tmp_path)
    assert record["pretrained_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["best_val_epoch"] in (1, 2) and record["best_val_acc"] * 4 == pytest.approx(round(record["best_val_acc"] * 4))
    import pandas as pd

    (epochs_file,) = (tmp_path / "results/train/epochs").glob("*.parquet")
    epochs = pd.read_parquet(epochs_file)
    best = epochs.loc[epochs["val_acc"].idxmax()]
    assert record["test_acc_at_best_val"] == best["test_acc"] and record["final_test_acc"] == epochs["test_acc"].iloc[-1]
    # 2 per class of the 3 labelled classes: 6 samples an epoch, so accuracies are sixths
    assert all(a * 6 == pytest.approx(round(a * 6)) for a in epochs["train_acc_noisy"])


def test_an_undecodable_image_fails_with_its_path(tmp_path: Path) -> None:
    from drainage_bench.trainer.data import ImageFiles

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    write_jpeg(good, 0)
    bad.write_bytes(b"\xff\xd8 not really a JPEG")
    batches = stream.StreamBatches(ImageFiles([good, bad]), np.arange(2), torch.device("cpu"), persistent=False,
                                   workers=0)
    with pytest.raises(OSError, match=f"{bad} cannot be decoded as an image"):
        list(batches(torch.arange(2), 2, train=True))


def test_decoding_on_the_device_gives_the_workers_views(tmp_path: Path) -> None:
    """The nvJPEG branch's logic (bytes from the workers, decode_jpeg on a list, views in the main
    process), run with decode_jpeg(device="cpu"): the same batches as decoding in the workers. A PNG
    in the batch (which decode_jpeg refuses) sends the batch to the CPU decoders."""
    from PIL import Image

    from drainage_bench.trainer.data import ImageFiles

    paths = []
    for n in range(5):
        paths.append(tmp_path / f"{n}.jpg")
        write_jpeg(paths[-1], n, (70, 50))
    files, order = ImageFiles(paths), torch.tensor([3, 1, 4, 0, 2])

    def views(on_device: bool, files=files) -> list[torch.Tensor]:
        batches = stream.StreamBatches(files, np.arange(len(files.paths)), torch.device("cpu"), persistent=False,
                                       crop="random_resized", seed=1, workers=0, decode_on_device=on_device)
        return [torch.cat([im for _, im in batches(order, 2, train=train)]) for train in (True, False)]

    assert all(torch.equal(a, b) for a, b in zip(views(True), views(False)))
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(tmp_path / "x.png")
    mixed = ImageFiles(paths[:4] + [tmp_path / "x.png"])
    assert all(torch.equal(a, b) for a, b in zip(views(True, mixed), views(False, mixed)))
