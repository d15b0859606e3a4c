"""Classifiers with a common interface: input in [0, 1], ``features()``, ``fc`` and ``cam_layer``.

Every model built here takes images in [0, 1] (any normalisation happens inside the model), and
exposes:

- ``features(x) -> (N, D)``: the penultimate representation (after global pooling);
- ``fc: nn.Linear``: the final layer, so ``forward(x) == fc(features(x))`` (up to dropout) and
  feature-space baselines can use its ``weight`` and ``bias``;
- ``cam_layer``: the module whose output Grad-CAM should hook (the last conv block).

``build_classifier(spec)`` records its ``spec`` on the model as ``model.spec`` so that the model
can be saved and rebuilt (see :mod:`diffguard.training`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffguard.checkpoints import load_checkpoint, state_dict_of

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenOOD v1 'cifar10' normalisation, used when training and testing its ResNet18_32x32.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with non-persistent buffers (absent from state dicts)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean/std must have equal length and std > 0, got {mean}, {std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A small conv net for 16x16 inputs in [0, 1].

    ``layer1`` (width, 16x16) → max-pool → ``layer2`` (2·width, 8x8) → max-pool →
    ``layer4`` (4·width, 4x4; the Grad-CAM layer) → global average pool → dropout → ``fc``.
    The input is shifted to [-1, 1] inside so the first layer sees centred values.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if num_classes < 2 or in_channels < 1 or width < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"SmallCNN needs num_classes >= 2, in_channels >= 1, width >= 1, dropout in "
                f"[0, 1); got {num_classes}, {in_channels}, {width}, {dropout}"
            )
        self.num_classes = num_classes
        self.layer1 = _conv_block(in_channels, width)
        self.layer2 = _conv_block(width, 2 * width)
        self.layer4 = _conv_block(2 * width, 4 * width)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)
        self.feature_dim = 4 * width

    @property
    def cam_layer(self) -> nn.Module:
        """The last conv block, which Grad-CAM hooks."""
        return self.layer4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, 4·width)`` (before dropout)."""
        h = self.layer1(x * 2.0 - 1.0)
        h = self.layer2(F.max_pool2d(h, 2))
        h = self.layer4(F.max_pool2d(h, 2))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class TorchvisionResNet50(nn.Module):
    """torchvision ResNet-50 behind an ImageNet mean/std normaliser; input in [0, 1].

    The state dict has torchvision's key names (``conv1``, ``bn1``, ``layer1``..``layer4``,
    ``fc``) under the prefix ``net.``; :meth:`load_torchvision_state_dict` takes a plain
    torchvision state dict.
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.net = resnet50(weights=None, num_classes=num_classes)

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    @property
    def cam_layer(self) -> nn.Module:
        """``layer4[-1]``, the last bottleneck (as the released LDM code hooks)."""
        return self.net.layer4[-1]

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a torchvision-named state dict (strict)."""
        self.net.load_state_dict(state, strict=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled 2048-d features."""
        net = self.net
        h = net.maxpool(net.relu(net.bn1(net.conv1(self.normalize(x)))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        return torch.flatten(net.avgpool(h), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block with OpenOOD's key names (``shortcut`` as a Sequential)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18_32x32(nn.Module):  # noqa: N801 - the name OpenOOD uses, kept for recognisability
    """CIFAR ResNet-18 (3x3 stem, no max-pool) with OpenOOD's parameter names.

    Keys: ``conv1``, ``bn1``, ``layer1``..``layer4`` (blocks with ``conv1/bn1/conv2/bn2`` and an
    optional ``shortcut.0/.1``), ``fc``. The normaliser in front (CIFAR-10 statistics unless
    given) has no state-dict entries, so OpenOOD checkpoints load with ``strict=True``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        layers = []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes, 1))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    @property
    def cam_layer(self) -> nn.Module:
        return self.layer4[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled 512-d features."""
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        h = self.layer4(self.layer3(self.layer2(self.layer1(h))))
        return torch.flatten(self.avgpool(h), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class MNISTNet(nn.Module):
    """ccexam 1.0.0's ``MNISTNet(28)`` (MIT licence) behind its MNIST normaliser; input in [0, 1].

    The layers sit under ``net`` with ccexam's key names (``features.0/3`` convs,
    ``classifier.0/2`` linears), so ``ccexam/weights/mnist.pth`` loads strictly into ``net``:
    conv(1→32)-ReLU-pool-conv(32→64)-ReLU-pool → flatten (64·7·7) → linear 128 - ReLU → ``fc``
    (linear 128→10). ``features`` is the 128-d ReLU output before ``fc``; Grad-CAM hooks the
    second conv's ReLU (7x7 after pooling would lose the map, 14x14 keeps it).
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD)
        self.net = nn.Module()
        self.net.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.net.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )
        self.feature_dim = 128

    @property
    def fc(self) -> nn.Linear:
        return self.net.classifier[2]

    @property
    def cam_layer(self) -> nn.Module:
        return self.net.features[4]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate features (after the hidden layer's ReLU)."""
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"mnist_net expects 28x28 inputs, got {tuple(x.shape[-2:])}")
        h = self.net.features(self.normalize(x)).flatten(start_dim=1)
        return self.net.classifier[1](self.net.classifier[0](h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _require(spec: dict[str, Any], key: str) -> Any:
    if key not in spec:
        raise KeyError(f"classifier spec {spec!r} lacks required key {key!r}")
    return spec[key]


def _load_weights(spec: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    weights = spec.get("weights")
    if weights is None:
        return None
    path = Path(weights)
    state = state_dict_of(load_checkpoint(path), path)
    # Checkpoints saved from DataParallel / DDP carry a 'module.' prefix; OpenOOD wrappers and
    # this package's own TorchvisionResNet50 (saved by save_model) put the network under 'net.'.
    for prefix in ("module.", "net."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def build_classifier(spec: dict[str, Any]) -> nn.Module:
    """Build a classifier from a spec, loading local weights when ``spec["weights"]`` is set.

    Spec keys by ``arch``:

    - ``small_cnn``: ``num_classes``, optional ``in_channels`` (1), ``width`` (32),
      ``dropout`` (0.2), ``weights`` (a ``.safetensors``/``.pt`` state dict).
    - ``resnet50_tv``: optional ``num_classes`` (1000), ``weights`` (torchvision key names; e.g.
      ``resnet50-0676ba61.pth``). Nothing is downloaded.
    - ``resnet18_32x32``: optional ``num_classes`` (10), ``mean``/``std`` (CIFAR-10),
      ``weights`` (OpenOOD key names).
    - ``mnist_net``: optional ``num_classes`` (10), ``weights`` (ccexam ``MNISTNet`` key
      names, e.g. ``ccexam/weights/mnist.pth``); 28x28 inputs.

    Every arch also accepts ``input_size``: the side the classifier is fed at (the released
    code: 224 for GDM runs, 256 for LDM runs, 32 on CIFAR-10); reconstruction jobs load images
    at that size unless the experiment sets its own ``input_size``. Weights saved with a
    ``module.`` (DataParallel) or ``net.`` (wrapper) prefix load as well.

    The model is returned in eval mode with ``model.spec`` set to a copy of ``spec``.

    Raises:
        KeyError: A required key is missing.
        ValueError: Unknown ``arch``.
        RuntimeError: The weights do not match the architecture (strict loading).
    """
    arch = _require(spec, "arch")
    model: nn.Module
    if arch == "small_cnn":
        model = SmallCNN(
            num_classes=int(_require(spec, "num_classes")),
            in_channels=int(spec.get("in_channels", 1)),
            width=int(spec.get("width", 32)),
            dropout=float(spec.get("dropout", 0.2)),
        )
        state = _load_weights(spec)
        if state is not None:
            model.load_state_dict(state, strict=True)
    elif arch == "resnet50_tv":
        model = TorchvisionResNet50(num_classes=int(spec.get("num_classes", 1000)))
        state = _load_weights(spec)
        if state is not None:
            model.load_torchvision_state_dict(state)
    elif arch == "resnet18_32x32":
        model = ResNet18_32x32(
            num_classes=int(spec.get("num_classes", 10)),
            mean=tuple(spec.get("mean", CIFAR10_MEAN)),
            std=tuple(spec.get("std", CIFAR10_STD)),
        )
        state = _load_weights(spec)
        if state is not None:
            model.load_state_dict(state, strict=True)
    elif arch == "mnist_net":
        model = MNISTNet(num_classes=int(spec.get("num_classes", 10)))
        state = _load_weights(spec)
        if state is not None:
            model.net.load_state_dict(state, strict=True)
    else:
        raise ValueError(
            f"classifier spec: unknown arch {arch!r} "
            "(expected 'small_cnn', 'resnet50_tv', 'resnet18_32x32' or 'mnist_net')"
        )
    if spec.get("weights") is None and arch != "small_cnn":
        log.warning("classifier %s built without weights (random initialisation)", arch)
    model.spec = dict(spec)  # type: ignore[assignment]
    return model.eval()


OPENOOD_DROPOUT_P = 0.5
"""OpenOOD v1 ``configs/networks/dropout_net.yml`` ``dropout_p`` (its DropoutNet's test-time p)."""


def mc_dropout_rate(model: nn.Module, p: float | None = None) -> float:
    """Dropout rate of the MC passes: ``p``, else the model's own ``dropout`` layer, else 0.5.

    A model built with a dropout layer before ``fc`` (``small_cnn``) keeps its rate; the
    checkpoint classifiers (ResNets, no dropout layer) get OpenOOD's DropoutNet rate.
    """
    if p is None:
        layer = getattr(model, "dropout", None)
        p = float(layer.p) if isinstance(layer, nn.Dropout) else OPENOOD_DROPOUT_P
    if not 0.0 <= p < 1.0:
        raise ValueError(f"MC-dropout rate must be in [0, 1), got {p}")
    return float(p)


def mc_dropout_logits(
    model: nn.Module, features: torch.Tensor, passes: int, p: float
) -> torch.Tensor:
    """``(passes, N, K)`` logits of ``fc`` on element-wise dropped-out penultimate features.

    OpenOOD v1's DropoutNet: ``fc(dropout2d(features, p, training=True))`` on the pooled
    ``(N, D)`` features of a network in eval mode, which torch applies element-wise to a 2-D
    input (inverted dropout, kept entries scaled by ``1 / (1 - p)``). Batch norm therefore keeps
    its running statistics; only the dropout masks vary (drawn from torch's global RNG).
    """
    if passes < 1:
        raise ValueError(f"MC-dropout needs passes >= 1, got {passes}")
    if features.ndim != 2:
        raise ValueError(f"MC-dropout needs (N, D) features, got shape {tuple(features.shape)}")
    return torch.stack(
        [model.fc(F.dropout(features, p, training=True)) for _ in range(passes)], dim=0
    )
