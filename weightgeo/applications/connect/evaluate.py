"""Evaluating a path between two networks: loss and accuracy along it, barriers, lengths.

Points are evenly spaced by Euclidean arc length (61 by default, as Garipov et al.). A
batch-norm network gets its statistics recomputed at every point by one pass over the
training data in train mode (cumulative average), as Garipov et al. do; ``recompute_bn=False``
skips it (the endpoints' statistics are then meaningless in between: say so when reporting).

Reported per path:
- loss barrier = max test loss along the path − mean of the endpoints' test losses
  (Ainsworth et al.);
- error barrier = max test error − mean of the endpoints' test errors (Frankle et al.);
- max accuracy drop = worse endpoint's test accuracy − worst test accuracy along the path;
- Euclidean length of the curve, and its length under the chosen metric as the sum of the
  metric distances between consecutive evaluated points on a fixed batch of inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace


class PointEvaluator:
    """Test (and optionally train) loss and accuracy at θ, with batch-norm statistics recomputed."""

    def __init__(
        self, model: FunctionalModel, train, test, recompute_bn: bool = True, batch_size: int = 1000,
        with_train: bool = True,
    ) -> None:
        # A private copy whose BN momentum we may change (FunctionalModel(fm) would see no
        # trainable parameter: its module is frozen).
        self.model = FunctionalModel(model.to_module(model.theta(), model.buffers))
        self.train, self.test = train, test
        self.batch_size = batch_size
        self.with_train = with_train
        self.recompute_bn = recompute_bn and self.model.has_batch_norm
        if self.recompute_bn:
            for m in self.model.module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = None  # cumulative average over the pass

    @torch.no_grad()
    def buffers(self, theta: Tensor) -> dict[str, Tensor] | None:
        """Batch-norm statistics of θ on the training data (None without batch norm)."""
        if not self.recompute_bn:
            return None
        buffers = self.model.clone_buffers()
        for name, b in buffers.items():
            if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)
        x = self.train.x
        for i in range(0, len(x), self.batch_size):
            self.model.train_call(theta, x[i : i + self.batch_size].to(theta.device), buffers)
        return buffers

    @torch.no_grad()
    def _scores(self, theta: Tensor, data, buffers) -> tuple[float, float]:
        total = torch.zeros((), dtype=torch.float64, device=theta.device)
        correct = torch.zeros((), dtype=torch.long, device=theta.device)
        for i in range(0, len(data.x), self.batch_size):
            xb = data.x[i : i + self.batch_size].to(theta.device)
            yb = data.y[i : i + self.batch_size].to(theta.device)
            logits = self.model(theta, xb, buffers)
            total += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(-1) == yb).sum()
        n = len(data.y)
        return float(total) / n, float(correct) / n  # reporting

    def __call__(self, theta: Tensor) -> dict[str, float]:
        buffers = self.buffers(theta)
        row = {}
        row["test_loss"], row["test_accuracy"] = self._scores(theta, self.test, buffers)
        if self.with_train:
            row["train_loss"], row["train_accuracy"] = self._scores(theta, self.train, buffers)
        return row


def path_metric_length(space: WeightSpace, points: Tensor, inputs: Tensor | None) -> float:
    """Σ of metric distances between consecutive points (Euclidean: exact for a polyline)."""
    with torch.no_grad():
        sq = space.segment_energies(points, inputs)
    return float(sq.clamp_min(0).sqrt().sum())  # reporting


def evaluate_points(points: Tensor, fractions: Tensor, evaluator: PointEvaluator) -> list[dict]:
    """One row per point: its arc-length fraction and the evaluator's scores."""
    rows = []
    for k in range(len(points)):
        rows.append({"point": k, "fraction": float(fractions[k]), **evaluator(points[k])})
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    """Barriers and extremes of one path's evaluation rows (accuracies in %, drops in points)."""
    losses = [r["test_loss"] for r in rows]
    accs = [100 * r["test_accuracy"] for r in rows]
    ends_loss = 0.5 * (losses[0] + losses[-1])
    worse_end = min(accs[0], accs[-1])
    out = {
        "start_test_accuracy": accs[0],
        "end_test_accuracy": accs[-1],
        "min_test_accuracy": min(accs),
        "max_accuracy_drop": max(0.0, worse_end - min(accs)),
        "loss_barrier": max(losses) - ends_loss,
        "error_barrier": max(100 - a for a in accs) - (200 - accs[0] - accs[-1]) / 2,
        "max_test_loss": max(losses),
    }
    if "train_loss" in rows[0]:
        train_losses = [r["train_loss"] for r in rows]
        out["train_loss_barrier"] = max(train_losses) - 0.5 * (train_losses[0] + train_losses[-1])
        out["min_train_accuracy"] = 100 * min(r["train_accuracy"] for r in rows)
    return {k: (v if math.isfinite(v) else float("nan")) for k, v in out.items()}
