"""Evaluating a path between two networks: loss and accuracy along it, barriers, lengths.

Points are evenly spaced by Euclidean arc length (61 by default, as Garipov et al.). A
batch-norm network gets its statistics recomputed at every point by one pass in train mode
(cumulative average) over ``bn_images`` training images — a fixed random subset, 1,000 by
default; 0 or more than the set holds is the whole training set, as Garipov et al. do.
``bn_recompute=False`` keeps the stored statistics (θ_a's: meaningless in between; say so when
reporting). The training loss and accuracy are measured on ``train_eval_images`` training
images (0: all). Evaluation runs in large batches (``batch_size``) and, for networks without
batch norm, ``points_per_pass`` points at once in one vmapped pass (it pays on a GPU).

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

from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import loss_and_correct
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def training_subset(train, images: int, seed: int):
    """``images`` training examples drawn at random from ``seed`` (all of them, in order, when
    ``images`` is 0 or covers the set)."""
    if images == 0 or images >= len(train.y):
        return train
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return train.subset(torch.randperm(len(train.y), generator=generator)[:images])


class PointEvaluator:
    """Test (and optionally training) loss and accuracy at θ, batch-norm statistics recomputed.

    Args:
        model: the network.
        train, test: the data sets.
        bn_recompute: recompute batch-norm statistics at every point (networks with batch norm).
        bn_images: training images of that pass (0: all).
        train_eval: also measure the training loss and accuracy, on ``train_eval_images`` (0: all).
        batch_size: examples per forward pass.
        points_per_pass: points evaluated in one vmapped pass (networks without batch norm).
        seed: seeds the training subsets.
    """

    def __init__(
        self, model: FunctionalModel, train, test, *, bn_recompute: bool = True, bn_images: int = 1000,
        train_eval: bool = True, train_eval_images: int = 0, batch_size: int = 1000,
        points_per_pass: int = 1, seed: int = 0,
    ) -> None:
        # A private copy whose BN momentum we may change (FunctionalModel(fm) would see no
        # trainable parameter: its module is frozen).
        self.model = FunctionalModel(model.to_module(model.theta(), model.buffers))
        self.test = test
        self.batch_size = batch_size
        self.bn_recompute = bn_recompute and self.model.has_batch_norm
        self.bn_data = training_subset(train, bn_images, seed)
        self.train = training_subset(train, train_eval_images, seed) if train_eval else None
        self.points_per_pass = 1 if self.model.has_batch_norm else max(1, points_per_pass)
        if self.bn_recompute:
            for m in self.model.module.modules():
                if isinstance(m, BATCH_NORMS):
                    m.momentum = None  # cumulative average over the pass

    @torch.no_grad()
    def buffers(self, theta: Tensor) -> dict[str, Tensor] | None:
        """Batch-norm statistics of θ on the chosen training images (None: keep the stored ones)."""
        if not self.bn_recompute:
            return None
        buffers = self.model.clone_buffers()
        for name, b in buffers.items():
            if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
                b.zero_()
            elif name.endswith("running_var"):
                b.fill_(1.0)
        x = self.bn_data.x
        for i in range(0, len(x), self.batch_size):
            self.model.train_call(theta, x[i : i + self.batch_size].to(theta.device), buffers)
        return buffers

    @torch.no_grad()
    def scores(self, points: Tensor, datasets: list) -> list[tuple[Tensor, Tensor]]:
        """(mean loss, accuracy) at each row of ``points`` (K×n) on each data set: K-vectors on the
        device. One point at a time (its batch-norm statistics recomputed once for all data sets),
        or all K in one vmapped pass per batch for a network without batch norm."""
        if self.model.has_batch_norm or len(points) == 1:
            per_point = []
            for theta in points:
                buffers = self.buffers(theta)
                per_point.append([loss_and_correct(self.model, theta, data, buffers=buffers,
                                                   batch_size=self.batch_size) for data in datasets])
            sums = [(torch.stack([p[d][0] for p in per_point]), torch.stack([p[d][1] for p in per_point]))
                    for d in range(len(datasets))]
        else:
            sums = [self._stacked_sums(points, data) for data in datasets]
        return [(total / len(data.y), correct.double() / len(data.y))
                for (total, correct), data in zip(sums, datasets, strict=True)]

    def _stacked_sums(self, points: Tensor, data) -> tuple[Tensor, Tensor]:
        """(summed loss, number correct) at every row of ``points`` in one vmapped pass per batch."""
        network, k = self.model.stacked(), len(points)
        total = torch.zeros(k, dtype=torch.float64, device=points.device)
        correct = torch.zeros(k, dtype=torch.long, device=points.device)
        for i in range(0, len(data.y), self.batch_size):
            x = data.x[i : i + self.batch_size].to(points.device)
            y = data.y[i : i + self.batch_size].to(points.device)
            logits = network(points, x)
            losses = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
            total += losses.view(k, -1).double().sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
        return total, correct

    def evaluate(self, points: Tensor, fractions: Tensor | None = None) -> list[dict]:
        """One row per point: its arc-length fraction and its scores (read from the device once
        per group of points: reporting).

        Raises:
            WeightgeoError: a point is not finite (never evaluated: a method keeps finite points).
        """
        if not bool(torch.isfinite(points).all()):  # a guard: one read
            raise WeightgeoError("refusing to evaluate a non-finite point")
        datasets = {"test": self.test} if self.train is None else {"test": self.test, "train": self.train}
        rows: list[dict] = []
        for start in range(0, len(points), self.points_per_pass):
            group = points[start : start + self.points_per_pass]
            values = {}
            for name, (loss, accuracy) in zip(datasets, self.scores(group, list(datasets.values())), strict=True):
                values[f"{name}_loss"], values[f"{name}_accuracy"] = loss.tolist(), accuracy.tolist()
            for j in range(len(group)):
                fraction = {} if fractions is None else {"fraction": float(fractions[start + j])}
                rows.append({"point": start + j, **fraction, **{name: v[j] for name, v in values.items()}})
        return rows

    def __call__(self, theta: Tensor) -> dict[str, float]:
        """The scores at one point."""
        row = self.evaluate(theta[None])[0]
        del row["point"]
        return row

    def test_losses(self, points: Tensor) -> Tensor:
        """The test loss at each row of ``points`` (the loss plane's evaluation)."""
        return torch.cat([self.scores(points[i : i + self.points_per_pass], [self.test])[0][0]
                          for i in range(0, len(points), self.points_per_pass)])


def path_metric_length(space: WeightSpace, points: Tensor, inputs: Tensor | None) -> float:
    """Σ of metric distances between consecutive points (Euclidean: exact for a polyline)."""
    return float(space.segment_lengths(points, inputs).sum())  # reporting (averaged over ranks)


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
