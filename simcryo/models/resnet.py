"""ResNet-18 for single-channel particle images, written for small boxes.

The ImageNet stem (7x7 stride-2 conv + max-pool) throws away 3/4 of a 32-48 px image
before the first residual block, so the default stem is one 3x3 stride-1 convolution
(CIFAR style). `width` scales every stage (64 is the paper's network; 16-32 are CPU presets).
"""
import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 backbone: (n, 1, box, box) -> (n, 8 * width) pooled features.

    stem: "small" (3x3 stride 1, for boxes <= 48 px), "strided" (3x3 stride 2, for 64-96 px)
    or "imagenet" (7x7 stride 2 + max-pool, for 128 px and more as in the paper).
    """

    def __init__(self, width=64, in_channels=1, stem="small", blocks=(2, 2, 2, 2)):
        super().__init__()
        if stem == "small":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        elif stem == "strided":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        elif stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"unknown stem {stem!r}")
        self.stem_name = stem
        self.n_stages = len(blocks)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each block: every block starts as identity (stabler early training).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def min_box(self):
        """Smallest input box that still leaves >= 2x2 pixels before pooling."""
        down = 2 ** (self.n_stages - 1) * {"small": 1, "strided": 2, "imagenet": 4}[self.stem_name]
        return 2 * down

    def forward(self, x):
        return torch.flatten(self.pool(self.layers(self.stem(x))), 1)


def resnet18(width=64, stem="small"):
    """Single-channel ResNet-18 with the given base width."""
    return ResNet18(width=width, stem=stem)
