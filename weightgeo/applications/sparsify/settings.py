"""The settings of a sparsification run: levels, methods, budgets and every method's knobs.

Field names are the command line's option names (``--stage-ratio`` is ``stage_ratio``); every
field is checked when the settings are built (see :mod:`weightgeo.settings`). The defaults are the
ones measured in BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightgeo.applications.sparsify.registry import METHODS
from weightgeo.metrics.registry import METRIC_HELP, metric_builder
from weightgeo.objectives.sparsity import check_sparsity
from weightgeo.settings import Settings, setting

DEFAULT_METHODS = ("geodesic", "geodesic-finetune", "fip", "random", "magnitude", "magnitude-finetune",
                   "magnitude-distill", "obs-distill", "imp", "imp-rewind", "obd")


@dataclass
class SparsifySettings(Settings):
    """What to run (levels, methods, budgets) and the knobs the methods share.

    Geodesic (see :func:`~weightgeo.applications.sparsify.geodesic.geodesic_path`): ``metric``
    averaged over ``metric_batch`` unlabelled inputs, re-drawn at every stage; ``damping`` μ;
    ``cg_iters`` per step; ``step`` "projection", "natural-gradient" (the papers' ``traverse``,
    with ``step_size``, ``step_norm``, ``path_share`` of the budget) or "layerwise" (OBC's mask and
    a layer-by-layer refit to the dense outputs, on ``obs_batch`` inputs with ``obs_damping``);
    ``stage_ratio`` for the gradual schedule; ``one_path``: all levels read off one path;
    ``distill_every_stage``: distil after every stage, not only at the requested levels.
    """

    sparsity: tuple[float, ...] = setting(
        (0.5, 0.8, 0.9, 0.95, 0.98),
        "Target sparsities in [0, 1): fractions of the weights set to zero, comma-separated.")
    method: tuple[str, ...] = setting(DEFAULT_METHODS, "Comma-separated methods.", choices=METHODS)
    budget: tuple[int, ...] = setting(
        (1000,), "Gradient evaluations per method and level (a metric-vector product counts as one); "
        "several, comma-separated, give an accuracy-budget sweep.", min=0)
    dataset: str | None = setting(None, "Data set (default: the checkpoint's).")
    step: Literal["projection", "natural-gradient", "layerwise"] = setting(
        "projection", "Geodesic step: the least-metric-length projection onto each stage's hyperplane, "
        "the papers' natural-gradient traverse, or layerwise: OBC's mask and every layer refit in turn to "
        "the dense layer's outputs (forward passes only; --obs-batch, --obs-damping).")
    stage_ratio: float = setting(
        2.2, "Gradual schedule: each stage keeps at least 1/ratio of the previous stage's weights.", above=1)
    one_path: bool = setting(
        False, "Read every level of the geodesic off one path (cumulative evaluations), or "
        "(--no-one-path) trace one path per level with the full budget.")
    ranking: Literal["global", "layer"] = setting("global", "Magnitude ranking over all weights or within each layer.")
    include_biases: bool = setting(False, "Prune biases and normalisation parameters too.")
    rerank_every: int = setting(0, "natural-gradient step: re-rank the mask every k steps (0: fixed per stage).",
                                min=0)
    lr_finetune: float = setting(0.01, "SGD rate of labelled fine-tuning.", above=0)
    lr_distill: float = setting(0.003, "SGD rate of label-free distillation.", above=0)
    imp_rounds: int = setting(4, "Rounds of imp and imp-rewind.", min=1)
    rewind_steps: int = setting(
        0, "imp-rewind: labelled steps from the dense network to the rewind point (0: rewind to the dense "
        "network itself), charged to every level.", min=0)
    checkpoints: bool = setting(True, "Write every sparse network as a checkpoint (with its mask).")
    metric: str = setting("output", METRIC_HELP, check=metric_builder)
    metric_batch: int = setting(256, "Inputs over which the metric is averaged at each step.", min=1)
    damping: float = setting(0.1, "μ in the damped natural-gradient step (G + μI)^-1 ∇O.", min=0)
    cg_iters: int = setting(10, "Conjugate-gradient iterations per step.", min=1)
    step_size: float = setting(0.5, "ε: the Euclidean length of each step of the path.", above=0)
    step_norm: Literal["euclidean", "metric"] = setting("euclidean", "Which length ε measures.")
    max_steps: int = setting(100_000, "The most steps a path may take.", min=0)
    path_share: float = setting(0.3, "natural-gradient step: the share of the budget for the path.", min=0, max=1)
    distill_every_stage: bool = setting(False, "Distil after every stage, not only at the requested levels.")
    finetune_share: float = setting(0.5, "geodesic-finetune: the share of the budget for fine-tuning.",
                                    min=0, max=1)
    batch_size: int = setting(64, "Minibatch size of fine-tuning and distillation.", min=1)
    obd_batch: int | None = setting(None, "Inputs of OBD's diagonal Fisher (default: --metric-batch).", min=1)
    obs_batch: int | None = setting(
        None, "obs-distill and --step layerwise: unlabelled inputs of the layer Hessians (default: all; "
        "forward passes only).", min=1)
    obs_damping: float = setting(
        0.01, "obs-distill and --step layerwise: OBC's dampening, a fraction of each H's mean diagonal.", above=0)
    fip_lam: float = setting(1.0, "fip: λ, the weight of the sparsity objective.", min=0)
    fip_lr: float = setting(0.01, "fip: the step length of its unit-norm steps.", above=0)
    fip_batch: int = setting(200, "fip: reference inputs per step.", min=1)
    seed: int = setting(0, "Random seed (reruns give the same numbers).")

    def check(self) -> None:
        self.sparsity = tuple(sorted({check_sparsity(s) for s in self.sparsity}))
        self.budget = tuple(sorted(set(self.budget)))

    @property
    def levels(self) -> list[float]:
        """The target sparsities, ascending."""
        return list(self.sparsity)

    @property
    def obd_inputs(self) -> int:
        """Inputs of OBD's diagonal Fisher."""
        return self.metric_batch if self.obd_batch is None else self.obd_batch
