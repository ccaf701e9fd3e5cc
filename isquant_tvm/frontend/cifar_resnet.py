"""He et al.'s CIFAR-10 ResNets (akamaster's pytorch_resnet_cifar10 layout) as torch modules.

The module names match akamaster's checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``), so
``load_cifar_checkpoint`` loads ``resnet20-12fca82f.th`` / ``resnet56-4bfd9763.th`` with a strict
``load_state_dict`` after stripping the ``module.`` prefix that DataParallel added.

Architecture: conv 3->16 3x3 + BN + ReLU, three stages of n = (depth - 2) / 6 BasicBlocks with 16/32/64
channels (the first block of stages 2 and 3 has stride 2), global average pool, ``linear`` 64->10.  Blocks
whose shape changes use the option-A shortcut: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4,
planes // 4))`` -- subsample, then zero-pad the channels on both sides (no parameters).

torch is optional: importing this module never needs it; calling its functions without torch raises an
ImportError that says how to get it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from .safe_load import load_checkpoint

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["cifar_resnet", "load_cifar_checkpoint", "depth_from_state_dict", "CIFAR_MEAN", "CIFAR_STD"]

# akamaster normalises CIFAR-10 with the ImageNet statistics.
CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)

_TORCH_HINT = "torch is needed for the CIFAR ResNet modules: install isquant-tvm[torch] (pip install 'isquant-tvm[torch]')"


def _torch():
    try:
        import torch  # noqa: F401
        import torch.nn  # noqa: F401
        import torch.nn.functional  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise ImportError(_TORCH_HINT) from e
    return torch


_CLASSES: dict[str, Any] = {}


def _classes() -> dict[str, Any]:
    """Define the nn.Module classes on first use (they need torch at class-creation time)."""
    if _CLASSES:
        return _CLASSES
    torch = _torch()
    nn = torch.nn
    F = torch.nn.functional

    class OptionAShortcut(nn.Module):
        """akamaster's LambdaLayer for option A: x[:, :, ::2, ::2], zero-pad planes // 4 channels each side."""

        def __init__(self, planes: int):
            super().__init__()
            self.pad = planes // 4

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)

        def extra_repr(self) -> str:
            return f"subsample=2, channel_pad={self.pad}"

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, in_planes: int, planes: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            if stride != 1 or in_planes != planes:
                self.shortcut: nn.Module = OptionAShortcut(planes)
            else:
                self.shortcut = nn.Sequential()

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out = out + self.shortcut(x)
            return F.relu(out)

    class CifarResNet(nn.Module):
        def __init__(self, depth: int, num_classes: int = 10):
            super().__init__()
            n = _blocks_per_stage(depth)
            self.depth = depth
            self.in_planes = 16
            self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.layer1 = self._make_layer(16, n, 1)
            self.layer2 = self._make_layer(32, n, 2)
            self.layer3 = self._make_layer(64, n, 2)
            self.linear = nn.Linear(64, num_classes)
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight)

        def _make_layer(self, planes: int, blocks: int, stride: int):
            layers = []
            for s in [stride] + [1] * (blocks - 1):
                layers.append(BasicBlock(self.in_planes, planes, s))
                self.in_planes = planes
            return nn.Sequential(*layers)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            out = F.avg_pool2d(out, out.size()[3])
            out = out.view(out.size(0), -1)
            return self.linear(out)

    _CLASSES.update(OptionAShortcut=OptionAShortcut, BasicBlock=BasicBlock, CifarResNet=CifarResNet)
    return _CLASSES


def _blocks_per_stage(depth: int) -> int:
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth!r}")
    return (depth - 2) // 6


def cifar_resnet(depth: int, num_classes: int = 10) -> "torch.nn.Module":
    """An untrained (Kaiming-normal) CIFAR ResNet-``depth`` with akamaster's module names."""
    return _classes()["CifarResNet"](depth, num_classes)


def depth_from_state_dict(state_dict: dict[str, Any]) -> int:
    """6n + 2, where n is the number of blocks in ``layer1`` (keys ``layer1.<i>.conv1.weight``)."""
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"(?:module\.)?layer1\.(\d+)\.conv1\.weight$", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ValueError("not a CIFAR ResNet state_dict: no consecutive layer1.<i>.conv1.weight keys")
    return 6 * len(blocks) + 2


def load_cifar_checkpoint(path: str | os.PathLike, depth: int | None = None) -> "torch.nn.Module":
    """Load one of akamaster's checkpoints (``{"state_dict": {"module.conv1.weight": ...}, ...}``) in eval mode.

    ``depth`` is inferred from the number of blocks when None; a given depth must agree with the file.
    The tensors are mapped to the CPU (the original files were saved from CUDA).
    """
    _torch()
    # weights_only: akamaster's files are {"best_prec1": tensor, "state_dict": {...}}, which torch's safe
    # unpickler reads with no allowlist (checked on resnet20-12fca82f.th and resnet56-4bfd9763.th).
    ckpt = load_checkpoint(path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    found = depth_from_state_dict(state)
    if depth is not None and depth != found:
        raise ValueError(f"{os.fspath(path)} holds a ResNet-{found}, not a ResNet-{depth}")
    num_classes = int(state["linear.weight"].shape[0]) if "linear.weight" in state else 10
    model = cifar_resnet(found, num_classes)
    model.load_state_dict(state, strict=True)
    return model.eval()
