"""``Data``: a labelled image data set held in memory as two tensors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Data:
    """A labelled image set in memory.

    ``x`` is float32, normalised, N×C×H×W; ``y`` is int64 class indices in
    ``[0, num_classes)``; ``name`` says where it came from (e.g. ``"cifar10"``).
    Both tensors live on one device; ``to`` moves them.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.dim() != 4:
            raise ValueError(f"Data.x must be N×C×H×W, got shape {tuple(self.x.shape)}")
        if self.y.dim() != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"Data.y must be a vector of {self.x.shape[0]} labels, got {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(
                f"Data needs float32 x and int64 y, got {self.x.dtype}, {self.y.dtype}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        return (
            f"Data({self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, device={self.device})"
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input, C×H×W."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        """The device the tensors are on."""
        return self.x.device

    def to(self, device: torch.device | str) -> Data:
        """The same data on ``device`` (self when it is already there)."""
        device = torch.device(device)
        if self.x.device == device and self.y.device == device:
            return self
        return Data(self.x.to(device), self.y.to(device), self.num_classes, self.name)

    def subset(self, indices: torch.Tensor | Sequence[int] | slice) -> Data:
        """The examples at ``indices`` (a slice, index list, index tensor or boolean mask)."""
        if isinstance(indices, slice):
            return Data(self.x[indices], self.y[indices], self.num_classes, self.name)
        index = torch.as_tensor(indices, device=self.x.device)
        if index.dtype != torch.bool:
            index = index.long()
        return Data(self.x[index], self.y[index], self.num_classes, self.name)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` mini-batches on the data's device.

        With ``shuffle`` the order is a random permutation drawn from ``generator`` (or the
        global RNG); without it the batches follow the stored order. ``drop_last`` leaves out
        a final batch smaller than ``batch_size``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = len(self)
        order: torch.Tensor | None = None
        if shuffle:
            gen_device = generator.device if generator is not None else "cpu"
            order = torch.randperm(n, generator=generator, device=gen_device).to(self.x.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                yield self.x[start:end], self.y[start:end]
            else:
                idx = order[start:end]
                yield self.x[idx], self.y[idx]
