"""VGG-11 / VGG-16 for 32×32 inputs (CIFAR), as in Garipov et al.'s dnn-mode-connectivity."""

from __future__ import annotations

import math

import torch
from torch import nn

# Output channels of the 3×3 convolutions, one list per block; each block ends in a 2×2 max pool.
VGG_BLOCKS: dict[int, list[list[int]]] = {
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


class VGG(nn.Module):
    """A CIFAR VGG: five conv blocks (3×3 convs, pad 1, [BN], ReLU; 2×2 max pool) and a classifier.

    After five pools a 3×32×32 input is 512×1×1; the classifier is Dropout, Linear(512, 512),
    ReLU, Dropout, Linear(512, 512), ReLU, Linear(512, num_classes). ``width`` scales every
    channel count and the classifier's hidden size (1.0 is the standard network; tests use a
    small width). Convolutions start from N(0, 2/(k²·out_channels)) with zero bias, as in
    Garipov et al.
    """

    def __init__(
        self, depth: int = 16, num_classes: int = 10, batch_norm: bool = True, width: float = 1.0
    ) -> None:
        super().__init__()
        if depth not in VGG_BLOCKS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_BLOCKS)}, not {depth}")
        layers: list[nn.Module] = []
        c_in = 3
        for block in VGG_BLOCKS[depth]:
            for channels in block:
                c_out = max(1, round(channels * width))
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        hidden = max(1, round(512 * width))
        self.classifier = nn.Sequential(
            nn.Dropout(),
            nn.Linear(c_in, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, int(num_classes)),
        )
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                fan = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan))
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N×num_classes) for images of shape N×3×32×32."""
        return self.classifier(torch.flatten(self.features(x), 1))
