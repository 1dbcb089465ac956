"""Model registry; every model ends in the same :class:`ClassifierHead`.

``make_model(name, num_classes, in_channels, image_size, extra_outputs, drainage_logit)`` returns a
module mapping normalised float images (B, C, H, W) to logits (B, num_classes + extra_outputs).
The head is the only place that knows about the drainage column: with ``extra_outputs=1`` and a
float ``drainage_logit`` the network learns C logits and a constant column z_d is appended
(open-set use); otherwise all ``num_classes + extra_outputs`` columns are learned.

Models:

- ``digits_cnn``: a small CNN for 8x8 digits (conv 32, conv 64, max-pool, FC 128).
- ``cnn4``: the MNIST network of Ma et al. 2020 ("Normalized Loss Functions for Deep Learning
  with Noisy Labels", ICML; their code, ``ToyModel('MNIST')``): two blocks of
  conv 3x3 (32, then 64) + BN + ReLU + max-pool 2, then FC 128 + BN + ReLU, then FC -> C.
- ``small_cnn``: two stride-2 conv 3x3 layers (16, 32 channels) + BN + ReLU and the head, for
  sweeps that must run on a few CPU cores (the ``mnist-mollify`` demonstration).
- ``cnn8``: the CIFAR-10 network of the same paper (``ToyModel('CIFAR10')``): three blocks of two
  conv 3x3 + BN + ReLU (64, 128, 196 channels) each followed by max-pool 2, then FC 256 + BN +
  ReLU, then FC -> C. Both use their initialisation: Kaiming-uniform convs, Xavier-uniform FCs.
- ``resnet18`` / ``resnet34``: CIFAR ResNets (He et al. 2016): 3x3 stem with stride 1 and no
  max-pool, BasicBlocks [2, 2, 2, 2] / [3, 4, 6, 3] of widths 64-128-256-512, global average pool.
- ``preact_resnet18`` / ``preact_resnet50``: pre-activation CIFAR ResNets (He et al., ECCV 2016),
  basic blocks [2, 2, 2, 2] / bottlenecks [3, 4, 6, 3], the network of the mollification paper.
- ``resnet50``: torchvision's ImageNet ResNet-50 (random weights, never downloaded) with its ``fc``
  replaced by the head.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from drainage_bench.errors import UserError, lookup

HeadFactory = Callable[[int], "ClassifierHead"]  # in_features -> head


class ClassifierHead(nn.Module):
    """The final linear layer, with the drainage column when asked for.

    ``logits = W h + b`` with ``num_classes + extra_outputs`` rows; or, with a constant drainage
    logit z_d, ``[W h + b, z_d]`` where W has ``num_classes`` rows and z_d is a plain float (no
    parameter, no gradient). The head runs in fp32 even under bf16 autocast: the logits feed the
    loss, and z_d keeps its exact value (bf16 would turn 2.3 into 2.296875).
    """

    def __init__(self, in_features: int, num_classes: int, extra_outputs: int = 0, drainage_logit: float | None = None):
        super().__init__()
        self.drainage_logit = drainage_logit
        learned = num_classes if drainage_logit is not None else num_classes + extra_outputs
        self.linear = nn.Linear(in_features, learned)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            logits = self.linear(features.to(self.linear.weight.dtype))
        if self.drainage_logit is None:
            return logits
        constant = logits.new_full((logits.shape[0], 1), self.drainage_logit)
        return torch.cat([logits, constant], dim=1)

    def extra_repr(self) -> str:
        return "" if self.drainage_logit is None else f"drainage_logit={self.drainage_logit}"


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]


def _init_like_ma_et_al(model: nn.Module) -> nn.Module:
    """Kaiming-uniform (fan_in, ReLU) conv weights, Xavier-uniform linear weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
    return model


def _feature_side(image_size: int, pools: int, model: str) -> int:
    side = image_size // 2**pools
    if side < 1:
        raise UserError(f"{model} needs images of at least {2**pools}x{2**pools}, got image_size={image_size}")
    return side


def digits_cnn(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    """Small CNN for 8x8 digits: conv 32 + BN + ReLU, conv 64 + BN + ReLU, max-pool, FC 128."""
    side = _feature_side(image_size, 1, "digits_cnn")
    return nn.Sequential(
        *_conv_bn_relu(in_channels, 32),
        *_conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 128),
        nn.ReLU(),
        head(128),
    )


def small_cnn(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    """A CNN small enough for CPU demonstration sweeps on 28x28 images: conv 3x3 stride 2 (16) +
    BN + ReLU, conv 3x3 stride 2 (32) + BN + ReLU, flatten (28x28 -> 7x7x32), the head.
    About 0.27 M multiply-adds per MNIST image (cnn4: about 4 M)."""
    side = image_size
    for _ in range(2):
        side = (side + 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(),
        head(32 * side * side),
    )


def _ma_et_al_cnn(in_channels: int, widths: list[list[int]], side: int, hidden: int, head: HeadFactory) -> nn.Module:
    layers: list[nn.Module] = []
    channels = in_channels
    for block in widths:
        for width in block:
            layers += _conv_bn_relu(channels, width)
            channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), head(hidden)]
    return _init_like_ma_et_al(nn.Sequential(*layers))


def cnn4(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    """Ma et al. 2020 MNIST CNN: [conv32]-pool-[conv64]-pool-FC128-FC C (28x28 -> 7x7x64)."""
    side = _feature_side(image_size, 2, "cnn4")
    return _ma_et_al_cnn(in_channels, [[32], [64]], side, 128, head)


def cnn8(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    """Ma et al. 2020 CIFAR-10 CNN: [64,64]-pool-[128,128]-pool-[196,196]-pool-FC256-FC C."""
    side = _feature_side(image_size, 3, "cnn8")
    return _ma_et_al_cnn(in_channels, [[64, 64], [128, 128], [196, 196]], side, 256, head)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN; identity shortcut, or 1x1 conv + BN when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stride-1 stem, no max-pool, 4 stages, global average pool."""

    def __init__(self, blocks: list[int], in_channels: int, head: HeadFactory):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        stages, channels = [], 64
        for index, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            stage = [BasicBlock(channels if i == 0 else width, width, stride if i == 0 else 1) for i in range(count)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


def resnet18(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    return CifarResNet([2, 2, 2, 2], in_channels, head)


def resnet34(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    return CifarResNet([3, 4, 6, 3], in_channels, head)


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3 (stride), BN-ReLU-conv3x3, plus the shortcut (a
    1x1 conv of the pre-activated input when the shape changes, else the input itself)."""

    expansion = 1

    @staticmethod
    def layers(in_channels: int, channels: int, out: int, stride: int) -> list[tuple[int, int, int, int]]:
        """(in, out, kernel, stride) of each BN-ReLU-conv step."""
        return [(in_channels, channels, 3, stride), (channels, out, 3, 1)]

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        out = channels * self.expansion
        steps = self.layers(in_channels, channels, out, stride)
        self.bns = nn.ModuleList(nn.BatchNorm2d(i) for i, _, _, _ in steps)
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False) for i, o, k, s in steps)
        self.shortcut = (nn.Conv2d(in_channels, out, 1, stride=stride, bias=False)
                         if stride != 1 or in_channels != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bns[0](x))
        shortcut = self.shortcut(pre) if self.shortcut is not None else x
        out = self.convs[0](pre)
        for bn, conv in zip(self.bns[1:], self.convs[1:]):
            out = conv(torch.relu(bn(out)))
        return out + shortcut


class PreActBottleneck(PreActBlock):
    """Pre-activation bottleneck: BN-ReLU-conv1x1, BN-ReLU-conv3x3 (stride), BN-ReLU-conv1x1 (4x width)."""

    expansion = 4

    @staticmethod
    def layers(in_channels: int, channels: int, out: int, stride: int) -> list[tuple[int, int, int, int]]:
        return [(in_channels, channels, 1, 1), (channels, channels, 3, stride), (channels, out, 1, 1)]


class PreActResNet(nn.Module):
    """Pre-activation ResNet for small images (He, Zhang, Ren, Sun, "Identity mappings in deep
    residual networks", ECCV 2016): 3x3 stride-1 stem conv, 4 stages of widths 64-128-256-512
    (strides 1, 2, 2, 2), a final BN-ReLU, global average pool, the head. The network of the
    mollification paper (Heinonen et al. 2025)."""

    def __init__(self, block: type, blocks: list[int], in_channels: int, head: HeadFactory):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        stages, channels = [], 64
        for index, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if index == 0 else 2
            stage = []
            for i in range(count):
                stage.append(block(channels, width, stride if i == 0 else 1))
                channels = width * block.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.final = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = head(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final(self.stages(self.stem(x))))


def preact_resnet18(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    return PreActResNet(PreActBlock, [2, 2, 2, 2], in_channels, head)


def preact_resnet50(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    return PreActResNet(PreActBottleneck, [3, 4, 6, 3], in_channels, head)


def resnet50(in_channels: int, image_size: int, head: HeadFactory) -> nn.Module:
    """torchvision's ResNet-50 with random weights (never downloaded); ``fc`` is the head."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = head(model.fc.in_features)
    return model


MODELS: dict[str, Callable[[int, int, HeadFactory], nn.Module]] = {
    "digits_cnn": digits_cnn,
    "cnn4": cnn4,
    "small_cnn": small_cnn,
    "cnn8": cnn8,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "preact_resnet18": preact_resnet18,
    "preact_resnet50": preact_resnet50,
}


def make_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    extra_outputs: int = 0,
    drainage_logit: float | None = None,
) -> nn.Module:
    """Build model ``name`` with a head of ``num_classes + extra_outputs`` logits.

    ``drainage_logit`` (a finite float) needs ``extra_outputs == 1``: that column is then the
    constant z_d instead of a learned one.
    """
    build = lookup("model", name, MODELS)
    if num_classes < 2 or in_channels < 1 or image_size < 1:
        raise UserError(
            f"model {name} needs num_classes >= 2, in_channels >= 1 and image_size >= 1; "
            f"got {num_classes}, {in_channels}, {image_size}"
        )
    if extra_outputs < 0:
        raise UserError(f"extra_outputs={extra_outputs} is negative; valid: 0 or more")
    if drainage_logit is not None:
        if extra_outputs != 1:
            raise UserError(f"drainage_logit={drainage_logit} needs extra_outputs=1 (got {extra_outputs})")
        if not math.isfinite(drainage_logit):
            raise UserError(f"drainage_logit={drainage_logit} is not finite; valid: a finite number or none")
        drainage_logit = float(drainage_logit)

    def head(in_features: int) -> ClassifierHead:
        return ClassifierHead(in_features, num_classes, extra_outputs, drainage_logit)

    return build(in_channels, image_size, head)
