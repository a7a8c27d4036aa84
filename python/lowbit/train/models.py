"""Small reference CNNs used by the demo and by QAT training (torch required).

Contract: every model here is torch.fx-traceable and uses only Conv2d,
BatchNorm2d, ReLU, tensor add, AdaptiveAvgPool2d, flatten and Linear, so that
``lowbit.qat.prepare`` and the lowbit converter can handle it without
special cases.
"""

import os

import torch
from torch import nn

__all__ = ["BasicBlock", "DWSeparableBlock", "DWSeparableNet", "FmnistResNet", "fmnist_resnet", "load_fmnist", "DATA_DIR"]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """A residual block's shortcut: the identity when the shape is kept, else a 1x1 conv (with
    the block's stride) followed by BN."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (``downsample``), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class DWSeparableBlock(nn.Module):
    """MobileNet-style residual block: depthwise conv3x3 (stride)-BN-ReLU,
    pointwise conv1x1-BN, + shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = self.bn2(self.pw(self.relu1(self.bn1(self.dw(x)))))
        return self.relu2(out + self.shortcut(x))


class DWSeparableNet(nn.Module):
    """Small 32x32 CNN with three depthwise-separable residual blocks (the
    depthwise benchmark model): stem conv3x3(3->32)-BN-ReLU, blocks 32->32,
    32->64 (stride 2), 64->128 (stride 2), global average pool, Linear(128, classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(DWSeparableBlock(32, 32, 1), DWSeparableBlock(32, 64, 2),
                                    DWSeparableBlock(64, 128, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class FmnistResNet(nn.Module):
    """ResNet-style CNN for (N, 1, 28, 28) inputs -> (N, num_classes) logits.

    stem conv3x3(1->w)+BN+ReLU, basic blocks at widths w (28x28), 2w (stride 2,
    14x14), 4w (stride 2, 7x7), global average pool, flatten, Linear(4w, classes).
    """

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.width = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)


def fmnist_resnet(width: int = 32, num_classes: int = 10) -> FmnistResNet:
    """The Fashion-MNIST demo network (default widths 32/64/128)."""
    return FmnistResNet(width=width, num_classes=num_classes)


DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")  # lowbit/data: trained checkpoints


def load_fmnist(kind: str = "w2a2_qat", data_dir=None) -> nn.Module:
    """Load a trained demo model in eval mode.

    kind: "fp32" -> fmnist_resnet(width) with ``fmnist_fp32.pt``;
          "w2a2_qat" -> ``lowbit.qat.prepare(fmnist_resnet(width), **qat_prepare)``
          with ``fmnist_w2a2_qat.pt`` (fake-quant model; LSQ steps included).
    width and the prepare() arguments are read from ``fmnist_train.json``.
    """
    import json

    data_dir = data_dir or DATA_DIR
    with open(os.path.join(data_dir, "fmnist_train.json")) as f:
        info = json.load(f)
    width = info["hyperparameters"]["width"]
    model = fmnist_resnet(width)
    if kind == "fp32":
        path = os.path.join(data_dir, info["fp32"]["file"])
    elif kind == "w2a2_qat":
        from . import qat

        model = qat.prepare(model, **info["qat_prepare"])
        path = os.path.join(data_dir, info["qat"]["file"])
    else:
        raise ValueError(f"kind must be 'fp32' or 'w2a2_qat', got {kind!r}")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()
