"""The settings of a connection run: one field per ``weightgeo connect`` option.

Enumerated options are checked where the settings are built (an unknown method or metric is one
line naming the choices). Evaluation settings say how much of the data each evaluated point
costs: batch-norm statistics are recomputed on ``bn_images`` training images (1,000 by default;
0 is the whole training set, as Garipov et al. do), the training loss and accuracy are measured on
``train_eval_images`` of them (1,000; 0: all), and the loss plane is a coarse 11 × 11 grid by
default, off for large networks (more than 5 million weights). With these defaults a point costs
about as much as the test set's evaluation plus two thousand training images, whatever the size of
the training set; on the CPU evaluation is then a tenth (an MLP) to a quarter (a small
batch-norm CNN) of a default run on mnist5k.
"""

from __future__ import annotations

from dataclasses import dataclass

from weightgeo.applications.connect.methods import DEFAULT_METHODS, METHODS
from weightgeo.errors import WeightgeoError
from weightgeo.metrics.registry import METRIC_HELP, metric_builder
from weightgeo.paths.relax import OBJECTIVES
from weightgeo.settings import Settings, setting

LARGE_NETWORK = 5_000_000
"""Weights above which a network is "large": its loss plane is off unless --plane-grid asks for
it (VGG16 has 15M weights, the default MLP 266k)."""

PLANE_GRID = 11
"""Grid points per side of the loss plane of networks up to :data:`LARGE_NETWORK` weights (a coarse
11 × 11 grid: each point costs a batch-norm pass and a test evaluation, as a path's points do)."""


TASK_WEIGHTS = {"labels": 100.0, "image": 5.0}
"""traverse's default task weight per --traverse-task (the cross-entropy is ≈ 0.01 at a trained
network; the image term, a squared distance of logits, is of order 1–100 along an unaligned path)."""


@dataclass
class ConnectSettings(Settings):
    """What ``weightgeo connect`` does: the methods, their budget and settings, the evaluation."""

    method: tuple[str, ...] = setting(DEFAULT_METHODS, "Comma-separated methods.", choices=METHODS)
    nodes: int = setting(8, "Interior nodes of the relaxed path.", min=1)
    budget: int = setting(3000, "Gradient evaluations for each method that trains (traverse, relax, bezier, "
                          "polychain).", min=1)
    points: int = setting(61, "Points evaluated along each path, evenly spaced by arc length.", min=3)
    batch_size: int = setting(128, "Training minibatch of every method that trains.", min=1)
    task_weight: float = setting(20.0, "relax: weight of the task loss at the nodes against the energy divided "
                                 "by the straight line's (0: energy only).", min=0)
    traverse_weight: float | None = setting(None, "traverse: weight of the task term beside ½||θ − θ_b||² (0: the "
                                            f"target alone; none: {TASK_WEIGHTS['image']:g} for --traverse-task "
                                            f"image, {TASK_WEIGHTS['labels']:g} for labels).", min=0)
    traverse_fade: bool = setting(True, "traverse: fade the task loss's weight with the remaining distance, w · "
                                  "||θ − θ_b|| / ||θ_b − θ_a||, so the walk's objective is least at θ_b "
                                  "(--no-traverse-fade: a constant weight, least short of θ_b).")
    traverse_task: str = setting("image", "traverse: what keeps the walk good — labels (the cross-entropy on "
                                 "training batches) or image (label-free: the outputs' distance from the output "
                                 "metric's geodesic between the ends' outputs at the walk's progress).",
                                 choices=("labels", "image"))
    train_eval: bool = setting(True, "Also evaluate the training loss and accuracy at every point.")
    relax_lr: float = setting(1e-3, "Learning rate of relax's optimiser.", above=0)
    relax_objective: str = setting("auto", "relax: minimise the path energy (energy), or fit every node's "
                                   "outputs to the output-space geodesic between the ends' outputs (image: "
                                   "output and fisher metrics); auto: image where the metric has one, else "
                                   "energy.", choices=OBJECTIVES)
    relax_optimizer: str = setting("adam", "relax's optimiser: adam, or sgd (momentum 0.9).",
                                   choices=("adam", "sgd"))
    relax_damping: float = setting(0.0, "relax: λ, the path energy under G + λI (each segment adds λ||Δθ||², "
                                   "holding the path nearer the straight line where G is blind).", min=0)
    curve_lr: float = setting(0.05, "SGD learning rate of the Bezier and polygonal-chain bends (Garipov: 0.015 "
                              "for VGG16).", above=0)
    weight_decay: float = setting(5e-4, "Weight decay on the curve's point w(t) (Bezier, polychain).", min=0)
    tol: float = setting(0.02, "traverse: distance to θ_b (fraction of ||θ_b − θ_a||) at which the final "
                         "straight segment starts.", above=0)
    plane_grid: int | None = setting(None, "Grid points per side of the loss plane picture (0: no picture; "
                                     f"default: {PLANE_GRID}, or 0 for networks of more than "
                                     f"{LARGE_NETWORK:,} weights).", min=0)
    bn_recompute: bool = setting(True, "Recompute batch-norm statistics at each evaluated point "
                                 "(--no-bn-recompute: keep θ_a's).")
    bn_images: int = setting(1000, "Training images on which batch-norm statistics are recomputed at each point "
                             "(0: the whole training set, as Garipov et al.).", min=0)
    train_eval_images: int = setting(1000, "Training images on which --train-eval measures the loss and "
                                     "accuracy at each point (0: the whole training set).", min=0)
    eval_batch: int = setting(1000, "Examples per forward pass of the evaluation.", min=1)
    eval_points: int = setting(0, "Points evaluated together in one vmapped pass, for networks without batch "
                               "norm (0: 16 on a GPU, 1 on the CPU, where it does not pay).", min=0)
    checkpoint_every: int = setting(50, "Save a method's progress every this many steps, for --resume (0: never).",
                                    min=0)
    dataset: str | None = setting(None, "Override the checkpoints' data set.")
    step_size: float | None = setting(0.25, "traverse: ε, the Euclidean length of each step (none: 1% of "
                                      "||θ_b − θ_a||); its steps follow from --budget.", above=0)
    damping: float = setting(1e-3, "μ in the damped natural-gradient step (G + μI)^-1 ∇O.", min=0)
    metric: str = setting("output", METRIC_HELP, check=metric_builder)
    cg_iters: int = setting(10, "Conjugate-gradient iterations per step.", min=1)
    metric_batch: int = setting(256, "Inputs over which the metric is averaged at each step.", min=1)
    seed: int = setting(0, "Random seed (reruns give the same numbers).")

    def check(self) -> None:
        if self.plane_grid == 1:
            raise WeightgeoError("--plane-grid must be 0 (no picture) or at least 2, got 1")
        self.method = tuple(dict.fromkeys(self.method))

    @property
    def walk_weight(self) -> float:
        """traverse's task weight: ``traverse_weight``, or the default for ``traverse_task``."""
        return TASK_WEIGHTS[self.traverse_task] if self.traverse_weight is None else self.traverse_weight

    def plane_size(self, weights: int) -> int:
        """Grid points per side of the loss plane for a network of ``weights`` weights (0: none)."""
        if self.plane_grid is not None:
            return self.plane_grid
        return PLANE_GRID if weights <= LARGE_NETWORK else 0
