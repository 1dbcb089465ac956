"""Tests for drainage_bench.trainer.models: shapes, the drainage head, sizes, determinism."""
import pytest
import torch
from torch import nn

from drainage_bench.errors import UserError
from drainage_bench.trainer.models import MODELS, ClassifierHead, make_model

# (in_channels, image_size) each model is used with; ResNets are tested at 32x32 to stay cheap.
SHAPES = {
    "digits_cnn": (1, 8),
    "cnn4": (1, 28),
    "cnn8": (3, 32),
    "resnet18": (3, 32),
    "resnet34": (3, 32),
    "resnet50": (3, 32),
    "small_cnn": (1, 28),
    "preact_resnet18": (3, 32),
    "preact_resnet50": (3, 32),
}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(model: nn.Module, in_channels: int, size: int, batch: int = 2) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(batch, in_channels, size, size, generator=torch.Generator().manual_seed(0)))


def test_registry_covers_every_model():
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_output_shapes_with_and_without_drainage_column(name):
    channels, size = SHAPES[name]
    plain = make_model(name, 7, channels, size)
    learned = make_model(name, 7, channels, size, extra_outputs=1)
    constant = make_model(name, 7, channels, size, extra_outputs=1, drainage_logit=-1.5)
    assert run(plain, channels, size).shape == (2, 7)
    assert run(learned, channels, size).shape == (2, 8)
    out = run(constant, channels, size)
    assert out.shape == (2, 8)
    assert torch.all(out[:, -1] == -1.5)
    # The constant column adds no parameter; the learned one adds one row of the last layer.
    assert count(constant) == count(plain)
    in_features = [m for m in plain.modules() if isinstance(m, ClassifierHead)][0].linear.in_features
    assert count(learned) == count(plain) + in_features + 1


def test_every_model_ends_in_one_classifier_head():
    for name, (channels, size) in SHAPES.items():
        heads = [m for m in make_model(name, 10, channels, size).modules() if isinstance(m, ClassifierHead)]
        assert len(heads) == 1, name


def test_constant_drainage_column_gets_no_gradient_and_keeps_its_value():
    head = ClassifierHead(5, 3, extra_outputs=1, drainage_logit=2.0)
    features = torch.randn(4, 5, requires_grad=True)
    logits = head(features)
    assert torch.equal(logits[:, 3], torch.full((4,), 2.0))
    logits[:, 3].sum().backward()  # the constant column depends on nothing
    assert torch.count_nonzero(features.grad) == 0
    assert head.linear.weight.grad is None or torch.count_nonzero(head.linear.weight.grad) == 0
    assert [n for n, _ in head.named_parameters()] == ["linear.weight", "linear.bias"]
    assert head.linear.out_features == 3
    double = head.to(torch.float64)(torch.randn(2, 5, dtype=torch.float64))
    assert double.dtype == torch.float64 and torch.all(double[:, 3] == 2.0)


def test_cnn8_parameter_count_by_formula():
    def conv(i, o):
        return 9 * i * o + o + 2 * o  # 3x3 weights, bias, BN scale and shift

    convs = conv(3, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128) + conv(128, 196) + conv(196, 196)
    fc1 = 196 * 4 * 4 * 256 + 256 + 2 * 256  # after three pools 32 -> 4; with BatchNorm1d
    for classes in (10, 100):
        fc2 = 256 * classes + classes
        assert count(make_model("cnn8", classes, 3, 32)) == convs + fc1 + fc2


def test_cnn4_parameter_count_by_formula():
    convs = (9 * 1 * 32 + 32 + 64) + (9 * 32 * 64 + 64 + 128)
    fc = (64 * 7 * 7 * 128 + 128 + 256) + (128 * 10 + 10)
    assert count(make_model("cnn4", 10, 1, 28)) == convs + fc


def test_resnet_parameter_counts_match_the_published_sizes():
    assert count(make_model("resnet18", 10, 3, 32)) == 11_173_962  # the usual "11.17M" CIFAR ResNet-18
    assert count(make_model("resnet34", 10, 3, 32)) == 21_282_122
    # torchvision's ResNet-50 has 25,557,032 parameters with its 1000-way fc (2048*1000 + 1000).
    assert count(make_model("resnet50", 14, 3, 224)) == 25_557_032 - 2048 * 1000 - 1000 + 2048 * 14 + 14


def test_small_cnn_and_preact_resnet18_parameter_counts():
    # small_cnn: conv 1->16 (9*16 + 16 bias + 32 BN), conv 16->32 (9*16*32 + 32 + 64), head 7*7*32 -> 10
    assert count(make_model("small_cnn", 10, 1, 28)) == (144 + 16 + 32) + (4608 + 32 + 64) + (1568 * 10 + 10)
    # PreActResNet18 of kuangliu/pytorch-cifar has 11,171,146 parameters (10 classes); ours adds the
    # final BN-ReLU of He et al. 2016 (2 * 512)
    assert count(make_model("preact_resnet18", 10, 3, 32)) == 11_171_146 + 2 * 512


def test_resnet50_accepts_grey_images():
    model = make_model("resnet50", 10, 1, 32)
    assert run(model, 1, 32).shape == (2, 10)


@pytest.mark.parametrize("name", ["digits_cnn", "cnn8", "resnet18"])
def test_initialisation_is_deterministic_under_manual_seed(name):
    channels, size = SHAPES[name]
    torch.manual_seed(123)
    first = make_model(name, 10, channels, size).state_dict()
    torch.manual_seed(123)
    second = make_model(name, 10, channels, size).state_dict()
    torch.manual_seed(124)
    third = make_model(name, 10, channels, size).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)


def test_cnn8_follows_ma_et_al_initialisation():
    torch.manual_seed(0)
    model = make_model("cnn8", 10, 3, 32)
    first_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][0]
    bound = (6 / (3 * 9)) ** 0.5  # Kaiming uniform, fan_in = 27, gain sqrt(2): sqrt(6 / fan_in)
    assert first_conv.weight.abs().max() <= bound
    assert first_conv.weight.abs().max() > 0.9 * bound
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    xavier = (6 / (256 + 10)) ** 0.5
    assert last.weight.abs().max() <= xavier and last.weight.abs().max() > 0.9 * xavier


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="vgg16"), "unknown model 'vgg16'; valid: cnn4, cnn8"),
        (dict(drainage_logit=0.0), "needs extra_outputs=1"),
        (dict(extra_outputs=2, drainage_logit=0.0), "needs extra_outputs=1"),
        (dict(extra_outputs=1, drainage_logit=float("inf")), "not finite"),
        (dict(extra_outputs=-1), "negative"),
        (dict(num_classes=1), "num_classes >= 2"),
        (dict(name="cnn8", image_size=4), "at least 8x8"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message):
    args = dict(name="digits_cnn", num_classes=10, in_channels=1, image_size=8) | kwargs
    with pytest.raises(UserError, match=message):
        make_model(**args)


def test_head_runs_in_fp32_under_bf16_autocast():
    """The logits feed the loss in fp32, and a constant drainage logit keeps its exact value:
    in bf16, 2.3 would become 2.296875 (8 bits of mantissa: 2 + 38/128)."""
    assert torch.tensor(2.3, dtype=torch.bfloat16).item() == 2.296875  # what the guard prevents
    head = ClassifierHead(5, 3, extra_outputs=1, drainage_logit=2.3)
    features = torch.randn(4, 5).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(features)
    assert logits.dtype == torch.float32
    assert torch.equal(logits[:, 3], torch.full((4,), 2.3))
    expected = features.float() @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(logits[:, :3], expected, rtol=0, atol=1e-6)
