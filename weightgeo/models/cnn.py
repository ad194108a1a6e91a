"""Convolutional networks for 28×28 / 32×32 images: the authors' Fashion CNN and a tiny test CNN."""

from __future__ import annotations

import torch
from torch import nn


class FashionCNN(nn.Module):
    """The CNN of the FIP authors' MNIST → Fashion-MNIST experiment (input 1×28×28).

    conv(1→32, 3×3, pad 1)+BN+ReLU+maxpool 2 → conv(32→64, 3×3)+BN+ReLU+maxpool 2 →
    flatten (64·6·6 = 2304) → Linear 600 → Dropout(0.25) → Linear 120 → Linear num_classes.
    The default head has 20 units: one shared head for MNIST (labels 0–9) and
    Fashion-MNIST (labels shifted to 10–19). As in the authors' network, the three
    linear layers have no nonlinearity between them.
    """

    flat_features = 64 * 6 * 6

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(self.flat_features, 600),
            nn.Dropout(0.25),
            nn.Linear(600, 120),
            nn.Linear(120, int(num_classes)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N×num_classes) for images ``x`` of shape N×1×28×28."""
        return self.classifier(torch.flatten(self.features(x), 1))


class SmallCNN(nn.Module):
    """A tiny CNN for tests (a few thousand parameters).

    conv(in→4, 3×3, pad 1)[+BN]+ReLU+maxpool 2 → conv(4→8, 3×3, pad 1)[+BN]+ReLU+maxpool 2
    → flatten (8·(image_size//4)²) → Linear num_classes. Input in_channels×image_size×image_size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        batch_norm: bool = False,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [int(in_channels), 4, 8]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        side = int(image_size) // 4
        self.classifier = nn.Linear(channels[-1] * side * side, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N×num_classes) for images of shape N×in_channels×image_size×image_size."""
        return self.classifier(torch.flatten(self.features(x), 1))
