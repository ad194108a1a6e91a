"""A fully connected ReLU network (the LeNet-300-100 family)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """A multilayer perceptron: flatten, then Linear+ReLU per hidden layer, then a Linear head.

    With the defaults (784 inputs, hidden layers 300 and 100, 10 classes) it is
    LeNet-300-100 with 266,610 parameters. Inputs of shape N×784 or N×C×H×W with
    C·H·W == input_size are accepted; the output is N×num_classes logits.
    """

    def __init__(
        self, input_size: int = 784, hidden: Sequence[int] = (300, 100), num_classes: int = 10
    ) -> None:
        super().__init__()
        self.input_size = int(input_size)
        sizes = [self.input_size, *(int(h) for h in hidden)]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], int(num_classes)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch ``x`` (N×input_size, or N×C×H×W flattened to that)."""
        return self.layers(x.reshape(x.shape[0], -1))
