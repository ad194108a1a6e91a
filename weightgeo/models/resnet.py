"""ResNet-18 for 32×32 inputs (CIFAR): He et al.'s BasicBlock network with a 3×3 stride-1 stem.

The CIFAR variant used across continual learning and mode connectivity (e.g. the "reduced"
ResNet-18 of GEM and Mammoth at full width): the ImageNet stem (7×7 stride-2 conv and a 3×3
max pool, which would shrink a 32×32 image to 8×8 before the first block) is replaced by one
3×3 stride-1 convolution, so the four stages see 32, 16, 8 and 4 pixels.
"""

from __future__ import annotations

from torch import Tensor, nn

STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)
"""Output channels of the four stages at width 1.0; each stage after the first halves the side."""
BLOCKS_PER_STAGE: tuple[int, ...] = (2, 2, 2, 2)
"""BasicBlocks per stage: ResNet-18 (1 stem conv + 2·(2+2+2+2) block convs + 1 linear = 18)."""


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a 1×1 conv + BN where
    the shape changes, else the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)  # out of place: safe under torch.func transforms


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stem conv + BN + ReLU, four stages of two BasicBlocks, global average
    pooling, a linear head.

    Stage widths are 64-128-256-512 times ``width`` (1.0 is the standard 11.17M-parameter
    network for 10 classes; tests use a small width); the stages after the first start with
    stride 2. Module names follow torchvision's ``resnet18`` (``conv1``, ``bn1``,
    ``layer1`` … ``layer4``, ``fc``), so at width 1.0 its weights load from torchvision's with
    the stem swapped. Inputs of any side work (the pooling is global), e.g. 1×28×28 digits.
    Convolutions start from He-normal (fan out), batch norm from (1, 0).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        widths = [max(1, round(w * width)) for w in STAGE_WIDTHS]
        self.conv1 = _conv3x3(int(in_channels), widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c_in = widths[0]
        for index, (c_out, blocks) in enumerate(zip(widths, BLOCKS_PER_STAGE), start=1):
            stride = 1 if index == 1 else 2
            stage = [BasicBlock(c_in, c_out, stride)]
            stage += [BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            c_in = c_out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, int(num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N×num_classes) for images of shape N×in_channels×H×W."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
