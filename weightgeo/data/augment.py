"""Batch-wise data augmentation on tensors (no PIL, no per-image Python loop)."""

from __future__ import annotations

import torch


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Standard CIFAR training augmentation applied to a batch: random crop and horizontal flip.

    Each image of ``x`` (N×C×H×W) is zero-padded by ``padding`` pixels on every side,
    cropped back to H×W at an offset drawn uniformly per image, and (with ``flip``)
    mirrored left-right with probability ½. The data are already normalised, so the
    padding is the mean colour rather than black. Random numbers come from
    ``generator`` (or the global RNG); the work runs on ``x``'s device. Returns a new tensor.
    """
    n, c, h, w = x.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=gen_device).to(x.device)

    dy, dx = draw(2 * padding + 1), draw(2 * padding + 1)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip:
        mirrored = draw(2).bool()
        cols = torch.where(mirrored[:, None], (w - 1) - cols, cols)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # N×H, in padded coordinates
    cols = dx[:, None] + cols  # N×W
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indexing on dims 0, 2, 3 puts the result as N×H×W×C; move C back.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
