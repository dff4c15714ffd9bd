"""ResNet-50 and BagNet-9/17/33: one bottleneck ResNet, parameterised.

Introduced in notebooks 02 and 03. Both families share the ResNet-50 layout (bottleneck blocks
[3, 4, 6, 3], widths 64·[1, 2, 4, 8], expansion 4) and differ only in

- the stem: ResNet-50 has a padded 7×7 stride-2 convolution and a max-pool; a BagNet has a 1×1 then an
  unpadded 3×3 convolution and no pooling;
- padding and kernels: ResNet-50 pads every 3×3; a BagNet pads nothing and uses a 3×3 kernel only in
  the first block of the stages flagged by `kernel3`, which caps its receptive field (9, 17 or 33 px);
- strides: [1, 2, 2, 2] for ResNet-50, [2, 2, 2, 1] for BagNets.

The parameter names equal torchvision's `resnet50` and the official BagNet code key for key and shape
for shape (tests check both), so ImageNet checkpoints load with `strict=True`. Unlike the official
BagNet code, non-square inputs work (the residual is cropped in both spatial dimensions).

Every model has `features(x)` (the last feature map, [N, C, H', W']), `patch_logits(x)` (the final
linear layer applied at every position, [N, K, H', W']) and `forward(x)` (the logits of the spatial
mean of the features, which equals the mean of the patch logits because the head is linear).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bagnet_lib.errors import UserError
from bagnet_lib.io import sha256_file
from bagnet_lib.nets.weights import (
    BAGNET_URLS,
    RESNET50_URL,
    fetch_checkpoint,
    hash_prefix,
    load_bagnet_imagenet,
    load_into,
    load_resnet50_imagenet,
    load_state_dict_file,
)

LAYERS = (3, 4, 6, 3)
MODEL_NAMES = ("resnet50", "bagnet9", "bagnet17", "bagnet33")
BAGNETS = MODEL_NAMES[1:]
BAGNET_KERNEL3 = {"bagnet9": (1, 1, 0, 0), "bagnet17": (1, 1, 1, 0), "bagnet33": (1, 1, 1, 1)}
OFFICIAL_STEM_BN_MOMENTUM = 0.001  # bagnets/pytorchnet.py: `self.bn1 = nn.BatchNorm2d(64, momentum=0.001)`


@dataclass(frozen=True)
class PatchGeometry:
    """Where the logit at grid position (i, j) looks: rows `stride*i … stride*i + size - 1`.

    For ResNet-50 the `size` is the theoretical receptive field, which covers the whole image at
    224 px; only BagNets have windows that are truly local.
    """

    size: int  # receptive field in pixels (33 for bagnet33)
    stride: int  # pixels between neighbouring logits (8 for every BagNet)

    def window(self, i: int, j: int) -> tuple[slice, slice]:
        """Row and column slices of the input pixels that logit (i, j) depends on."""
        return (slice(self.stride * i, self.stride * i + self.size),
                slice(self.stride * j, self.stride * j + self.size))

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """H', W' for an unpadded network: the number of full windows that fit."""
        return ((height - self.size) // self.stride + 1, (width - self.size) // self.stride + 1)


class SubsampledConv2d(nn.Conv2d):
    """A 1×1 convolution with stride s, computed as "take every s-th pixel, then a stride-1 1×1 convolution".

    The two are the same function with the same weights (a 1×1 kernel at stride s reads exactly the pixels
    (s·i, s·j)), and this module's parameters and state_dict are `nn.Conv2d`'s. It exists for speed and
    safety on CPU: oneDNN's weight gradient of a *strided* 1×1 convolution on a channels-last input with few
    input channels writes outside its scratchpad (uxlfoundation/oneDNN issue #6035; here a segfault or
    "double free" in a narrow BagNet's downsampling shortcut), while the stride-1 one is sound. With it,
    BagNets train channels-last on CPU too.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        s = self.stride
        return F.conv2d(x[..., ::s[0], ::s[1]], self.weight, self.bias)


def pointwise_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free 1×1 convolution; a strided one is a `SubsampledConv2d` (same parameters, same output)."""
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
    return SubsampledConv2d(in_channels, out_channels, stride)


class Bottleneck(nn.Module):
    """1×1 → k×k (stride here, as in torchvision v1.5 and BagNets) → 1×1, plus the shortcut.

    With `padding=0` the main path shrinks; the shortcut is then cropped at the bottom/right, exactly
    as the official BagNet code does, so the output at (i, j) still sees only its own window.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, kernel_size: int = 3,
                 padding: int = 1, downsample: nn.Module | None = None, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = pointwise_conv(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv2 = (pointwise_conv(planes, planes, stride) if kernel_size == 1 else
                      nn.Conv2d(planes, planes, kernel_size=kernel_size, stride=stride, padding=padding, bias=False))
        self.bn2 = nn.BatchNorm2d(planes, momentum=bn_momentum)
        self.conv3 = pointwise_conv(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion, momentum=bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        h, w = out.shape[-2:]
        if identity.shape[-2:] != out.shape[-2:]:
            identity = identity[..., :h, :w]
        return self.relu(out + identity)


class PatchResNet(nn.Module):
    """A bottleneck ResNet-50 whose stem, padding and kernel sizes make it ResNet-50 or a BagNet."""

    def __init__(self, *, bagnet: bool, kernel3: tuple[int, int, int, int] = LAYERS,
                 strides: tuple[int, int, int, int] = (1, 2, 2, 2), num_classes: int = 1000,
                 width: float = 1.0, bn_momentum: float = 0.1, geometry: PatchGeometry | None = None,
                 stem_bn_momentum: float | None = None):
        super().__init__()
        self.is_bagnet = bagnet
        self.geometry = geometry
        stem = _scaled(64, width)
        self.inplanes = stem
        self._bn_momentum = bn_momentum
        if bagnet:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=1, stride=1, padding=0, bias=False)
            self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=1, padding=0, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.conv2 = nn.Identity()
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(stem, momentum=bn_momentum if stem_bn_momentum is None else stem_bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        padding = 0 if bagnet else 1
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(_scaled(64 * 2**k, width), LAYERS[k], strides[k], kernel3[k], padding)
            for k in range(4))
        self.num_features = self.inplanes
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int, kernel3: int, padding: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                pointwise_conv(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion, momentum=self._bn_momentum))
        layers = []
        for i in range(blocks):
            kernel = 3 if i < kernel3 else 1  # official BagNet: 3×3 in the first `kernel3` blocks
            layers.append(Bottleneck(self.inplanes, planes, stride if i == 0 else 1, kernel,
                                     padding if kernel == 3 else 0,
                                     downsample if i == 0 else None, self._bn_momentum))
            self.inplanes = planes * Bottleneck.expansion
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """The last feature map [N, C, H', W'] (before pooling)."""
        x = self.maxpool(self.relu(self.bn1(self.conv2(self.conv1(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def patch_logits(self, x: Tensor) -> Tensor:
        """The final linear layer applied at every position: [N, num_classes, H', W']."""
        return self.head(self.features(x))

    def head(self, features: Tensor) -> Tensor:
        """Apply `fc` to a feature map [N, C, H', W'] position by position."""
        return torch.einsum("nchw,kc->nkhw", features, self.fc.weight) + self.fc.bias[None, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def model_label(name: str) -> str:
    """`bagnet33` → `BagNet-33`, `resnet50` → `ResNet-50`: the names the papers use."""
    for prefix, label in (("bagnet", "BagNet-"), ("resnet", "ResNet-")):
        if name.startswith(prefix):
            return label + name[len(prefix):]
    return name


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width)))


def resnet50(num_classes: int = 1000, pretrained: bool = False, width: float = 1.0) -> PatchResNet:
    """ResNet-50 (torchvision layout); `pretrained` loads torchvision's IMAGENET1K_V1 weights."""
    model = PatchResNet(bagnet=False, kernel3=LAYERS, strides=(1, 2, 2, 2),
                        num_classes=1000 if pretrained else num_classes, width=width)
    if pretrained:
        _require_full_width(width, "resnet50")
        load_resnet50_imagenet(model)
        model.fc = nn.Linear(model.num_features, num_classes)
    return model


def bagnet(name: str, num_classes: int = 1000, pretrained: bool = False, width: float = 1.0,
           bn_momentum: float = 0.1, stem_bn_momentum: float | None = None) -> PatchResNet:
    """BagNet-9/17/33 (Brendel & Bethge 2019), key-for-key the official PyTorch model.

    BatchNorm momentum as in the official code: 0.001 in the stem (`bn1`) and 0.1 in the blocks when
    `pretrained` (this matters for the paper, whose frozen backbone still ran BatchNorm in train mode, so
    its running statistics drifted towards the flowers at the stem's slow rate). Trained from scratch,
    the stem uses `bn_momentum` too unless `stem_bn_momentum` is given: a 0.001 running average would lag
    far behind a stem whose statistics change every step.
    """
    if name not in BAGNET_KERNEL3:
        raise UserError(f"Unknown BagNet {name!r}; choose one of {sorted(BAGNET_KERNEL3)}.")
    rf = int(name.removeprefix("bagnet"))
    if stem_bn_momentum is None and pretrained:
        stem_bn_momentum = OFFICIAL_STEM_BN_MOMENTUM
    model = PatchResNet(bagnet=True, kernel3=BAGNET_KERNEL3[name], strides=(2, 2, 2, 1),
                        num_classes=1000 if pretrained else num_classes, width=width,
                        bn_momentum=bn_momentum, geometry=PatchGeometry(size=rf, stride=8),
                        stem_bn_momentum=stem_bn_momentum)
    if pretrained:
        _require_full_width(width, name)
        load_bagnet_imagenet(model, name)
        model.fc = nn.Linear(model.num_features, num_classes)
    return model


def bagnet9(num_classes: int = 1000, pretrained: bool = False, **kw) -> PatchResNet:
    """BagNet with a 9×9 px receptive field (grid 27×27 at 224 px)."""
    return bagnet("bagnet9", num_classes, pretrained, **kw)


def bagnet17(num_classes: int = 1000, pretrained: bool = False, **kw) -> PatchResNet:
    """BagNet with a 17×17 px receptive field (grid 26×26 at 224 px)."""
    return bagnet("bagnet17", num_classes, pretrained, **kw)


def bagnet33(num_classes: int = 1000, pretrained: bool = False, **kw) -> PatchResNet:
    """BagNet with a 33×33 px receptive field (grid 24×24 at 224 px); the paper's model."""
    return bagnet("bagnet33", num_classes, pretrained, **kw)


def build_model(name: str, num_classes: int, pretrained: bool = False, feature_extract: bool = False,
                width: float = 1.0, zero_init_residual: bool = False) -> PatchResNet:
    """A model with a new head for `num_classes`; `feature_extract` freezes all but `fc` (the paper).

    `zero_init_residual` (from-scratch training only) sets each block's last BatchNorm weight to 0, so
    every residual block starts as the identity (Goyal et al. 2017; torchvision's flag of the same name).
    """
    if name == "resnet50":
        model = resnet50(num_classes, pretrained=pretrained, width=width)
    elif name in BAGNET_KERNEL3:
        model = bagnet(name, num_classes, pretrained=pretrained, width=width)
    else:
        raise UserError(f"Unknown model {name!r}. Available: {', '.join(MODEL_NAMES)}.")
    if zero_init_residual and not pretrained:
        for block in model.modules():
            if isinstance(block, Bottleneck):
                nn.init.zeros_(block.bn3.weight)
    if feature_extract:
        for pname, p in model.named_parameters():
            p.requires_grad = pname.startswith("fc.")
    return model


def _require_full_width(width: float, name: str) -> None:
    if width != 1.0:
        raise UserError(f"Pretrained {name} weights exist only for width 1.0 (got width={width}); "
                        "use pretrained=False or width=1.0.")


@dataclass(frozen=True)
class WeightsInfo:
    """Where an ImageNet-study model's weights came from: the file, its SHA-256, whether it is the published
    checkpoint (its hash checked against the published prefix), and the head's size."""

    source: str
    sha256: str
    published: bool
    num_classes: int
    width: float


def imagenet_model(name: str, weights: str | Path = "imagenet") -> tuple[PatchResNet, WeightsInfo]:
    """`name` with its ImageNet head: the published checkpoint (`"imagenet"`: torch.hub cache, downloaded if
    needed, SHA-256 checked), or a checkpoint file of the same architecture, whose class count and width are
    read from it. A file whose name carries a torch.hub hash suffix (`…-2ddd53ed.pth.tar`, as the published
    files do) is checked against that prefix and refused, with nothing loaded, on a mismatch.
    """
    if name not in MODEL_NAMES:
        raise UserError(f"Unknown model {name!r}. Available: {', '.join(MODEL_NAMES)}.")
    url = RESNET50_URL if name == "resnet50" else BAGNET_URLS[name]
    if str(weights) == "imagenet":
        path, published = fetch_checkpoint(url), True  # downloaded if needed, verified against the published prefix
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"Checkpoint file {path} does not exist. Pass the path of a downloaded copy of {url} "
                            "(or of a checkpoint of your own), or --weights imagenet to use the torch.hub cache.")
        prefix = hash_prefix(path.name)
        prefix = prefix if prefix and len(prefix) >= 8 else None  # `run-2.pt` is not a hash
        published = prefix is not None and prefix == hash_prefix(url)
        if prefix is not None:
            actual = sha256_file(path)
            if not actual.startswith(prefix):
                named = f" (the published {Path(url).name})" if published else ""
                raise UserError(f"Checkpoint {path} has SHA-256 {actual[:16]}…, but its name says it must start with "
                                f"{prefix}{named}. The file is corrupted or is not the checkpoint it is named after; "
                                "nothing was loaded. Download it again, or name a checkpoint of your own without "
                                "the -<hash> suffix.")
    state = load_state_dict_file(path)
    if "fc.weight" not in state or "conv1.weight" not in state:
        raise UserError(f"Checkpoint {path} has no fc.weight or conv1.weight: it is not a ResNet-50 or BagNet "
                        "state_dict. Pass the published checkpoint or one saved from this project's models.")
    num_classes, stem = int(state["fc.weight"].shape[0]), int(state["conv1.weight"].shape[0])
    width = stem / 64  # `_scaled` inverted: every layer's width is the stem's times a power of two
    if name == "resnet50":
        model = resnet50(num_classes=num_classes, width=width)
    else:
        model = bagnet(name, num_classes=num_classes, width=width)
    load_into(model, state, path, name)
    return model.eval(), WeightsInfo(str(path), sha256_file(path), published, num_classes, width)
