"""The pruning baselines: magnitude (one-shot, fine-tuned, distilled), random, imp (with and without
rewinding), obd, layer-wise OBS (obs-distill) and fip.

Each is ``method(task, levels, budget) -> list[SparseResult]``. The recovery phases are masked
fine-tuning with labels or masked distillation without (:mod:`.finetune`, both the library's one
optimisation loop on the masked weight space), so a pruned network stays exactly sparse.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from weightgeo.applications.sparsify.finetune import Recovery, masked_distill, masked_finetune
from weightgeo.applications.sparsify.task import (
    SparseResult,
    SparsifyTask,
    check_levels,
    sparse_result,
    worse,
)
from weightgeo.errors import WeightgeoError
from weightgeo.metrics import DiagonalFisher
from weightgeo.objectives.sparsity import Sparsity, keep_mask
from weightgeo.paths import fip


class Recover(NamedTuple):
    """A recovery phase ``run(θ, keep, steps, buffers) -> Recovery`` and the option that tames it."""

    run: Callable[[Tensor, Tensor, int, dict | None], Recovery]
    hint: str


def finetuning(task: SparsifyTask) -> Recover:
    """Masked fine-tuning with labels under the task's settings."""
    s = task.settings
    return Recover(lambda theta, keep, steps, buffers: masked_finetune(
        task.fmodel, theta, keep, task.train, steps, lr=s.lr_finetune, batch_size=s.batch_size, seed=s.seed,
        buffers=buffers,
    ), "lower --lr-finetune")


def distilling(task: SparsifyTask) -> Recover:
    """Masked distillation toward the dense network's outputs (no labels) under the task's settings."""
    s = task.settings
    return Recover(lambda theta, keep, steps, buffers: masked_distill(
        task.fmodel, theta, keep, task.distillation, steps, lr=s.lr_distill, batch_size=s.batch_size,
        seed=s.seed, buffers=buffers,
    ), "lower --lr-distill")


def magnitude(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot global magnitude pruning (no gradient evaluation at all)."""
    out = []
    for s in check_levels(levels):
        started = time.perf_counter()
        keep = task.magnitude_mask(task.theta, s)
        out.append(sparse_result("magnitude", s, task.theta * keep, keep, 0, started))
    return out


def _prune_then(name: str, task: SparsifyTask, levels, budget: int, choose, recover: Recover) -> list[SparseResult]:
    out = []
    for s in check_levels(levels):
        started = time.perf_counter()
        keep, spent = choose(s)
        theta, used, buffers, stop = recover.run(task.theta * keep, keep, budget - spent, None)
        out.append(sparse_result(name, s, theta, keep, spent + used, started, stop=stop, hint=recover.hint,
                                 buffers=buffers))
    return out


def random_prune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """A uniformly random mask (exact count per ranked set) + masked fine-tuning with labels."""
    generator = torch.Generator(device="cpu").manual_seed(task.settings.seed)

    def choose(s):
        scores = torch.rand(task.fmodel.n, generator=generator).to(task.theta.device)
        return keep_mask(scores, task.eligible, s, task.groups), 0

    return _prune_then("random", task, levels, budget, choose, finetuning(task))


def magnitude_finetune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot global magnitude pruning + masked fine-tuning with labels (Han et al. 2015)."""
    return _prune_then("magnitude-finetune", task, levels, budget,
                       lambda s: (task.magnitude_mask(task.theta, s), 0), finetuning(task))


def magnitude_distill(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot magnitude pruning + masked distillation toward the dense outputs (no labels)."""
    return _prune_then("magnitude-distill", task, levels, budget,
                       lambda s: (task.magnitude_mask(task.theta, s), 0), distilling(task))


def imp(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Iterative magnitude pruning (Frankle & Carbin 2019) without rewinding: R rounds, each
    pruning to 1 − (1 − s)^{r/R} and fine-tuning with labels for budget/R minibatches (after a
    round that diverged, the remaining rounds only prune)."""
    rounds = task.settings.imp_rounds
    finetune = finetuning(task)
    out = []
    for s in check_levels(levels):
        started = time.perf_counter()
        theta, spent, buffers, stop = task.theta, 0, None, None
        keep = torch.ones_like(task.eligible)
        for r in range(1, rounds + 1):
            level = 1 - (1 - s) ** (r / rounds)
            keep = task.magnitude_mask(theta, level)
            steps = 0 if stop is not None and stop.diverged else budget * r // rounds - spent
            theta, used, buffers, phase = finetune.run(theta * keep, keep, steps, buffers)
            stop = phase if stop is None else worse(stop, phase)
            spent += used
        out.append(sparse_result("imp", s, theta, keep, spent, started, stop=stop, hint=finetune.hint,
                                 buffers=buffers))
    return out


def imp_rewind(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Iterative magnitude pruning with weight rewinding (lottery tickets: Frankle et al. 2020):
    R rounds, each pruning the previous round's trained weights by magnitude to 1 − (1 − s)^{r/R},
    rewinding the kept weights to θ_rewind and retraining them with labels for budget/R minibatches
    with the schedule restarted. The checkpoint holds no early-training weights, so θ_rewind is
    the dense network after ``rewind_steps`` labelled steps taken from it (0: the dense network:
    Renda et al.'s rewinding to the end of training), those steps charged to every level."""
    s = task.settings
    finetune = finetuning(task)
    every = torch.ones_like(task.eligible)
    rewind, spent0, buffers0, stop0 = task.theta, 0, None, None
    if s.rewind_steps and budget:
        rewind, spent0, buffers0, stop0 = finetune.run(task.theta, every, min(s.rewind_steps, budget), None)
    out = []
    for level in check_levels(levels):
        started = time.perf_counter()
        theta, keep, spent, buffers, stop = rewind, every, spent0, buffers0, stop0
        per_round = (budget - spent0) // s.imp_rounds
        for r in range(1, s.imp_rounds + 1):
            keep = task.magnitude_mask(theta, 1 - (1 - level) ** (r / s.imp_rounds)) & keep
            steps = 0 if stop is not None and stop.diverged else (
                budget - spent if r == s.imp_rounds else per_round)
            theta, used, buffers, phase = finetune.run(rewind * keep, keep, steps, buffers0)
            stop = phase if stop is None else worse(stop, phase)
            spent += used
        out.append(sparse_result("imp-rewind", level, theta, keep, spent, started, stop=stop,
                                 hint=finetune.hint, buffers=buffers))
    return out


def obs_distill(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Layer-wise Optimal Brain Surgeon (OBC, Frantar et al. 2022; :mod:`.obs`) on the unlabelled
    inputs, as many zeros per layer as global magnitude pruning puts there, then masked
    distillation toward the dense outputs for the whole budget (the pruning is forward passes
    only: no gradient evaluation). Label-free."""
    pruner = task.layerwise_obs

    def choose(level):
        return pruner.prune(task.magnitude_mask(task.theta, level))

    out = []
    recover = distilling(task)
    for level in check_levels(levels):
        started = time.perf_counter()
        pruned, keep = choose(level)
        theta, used, buffers, stop = recover.run(pruned, keep, budget, None)
        out.append(sparse_result("obs-distill", level, theta, keep, used, started, stop=stop, hint=recover.hint,
                                 buffers=buffers))
    return out


def obd(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Optimal-brain-damage pruning by the diagonal-Fisher saliency ½ F_ii θ_i² + fine-tuning.

    The Fisher's diagonal on ``obd_batch`` unlabelled inputs costs one gradient evaluation
    per class; the rest of the budget fine-tunes with labels.
    """
    s = task.settings
    x = next(task.input_batches(s.obd_inputs, s.seed))
    with torch.no_grad():
        classes = task.fmodel(task.theta, x[:1]).shape[-1]
    saliency: list[Tensor] = []

    def choose(level):
        if budget < classes:
            raise WeightgeoError(f"obd needs a budget of at least {classes} gradient evaluations")
        if not saliency:
            fisher = DiagonalFisher(task.fmodel, x).diagonal(task.theta)
            saliency.append(0.5 * fisher * task.theta.square())
        return keep_mask(saliency[0], task.eligible, level, task.groups), classes

    return _prune_then("obd", task, levels, budget, choose, finetuning(task))


def fip_method(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The FIP code's sparsification: SGD on Bhattacharyya(f, f₀) + λ·½||θ − P(θ)||² with the
    mask re-ranked every step and unit-norm steps, stopped at the hyperplane or the budget,
    then hard-pruned (at the last finite point, if it diverged). Label-free."""
    s = task.settings
    out = []
    for level in check_levels(levels):
        started = time.perf_counter()
        objective = Sparsity(task.fmodel, level, ranking=s.ranking, include_biases=s.include_biases,
                             rerank_every=1, tol=1e-2)
        path = fip(
            task.fmodel, objective, task.inputs, start=task.theta, lam=s.fip_lam, lr=s.fip_lr,
            distance="bhattacharyya", normalize=True, max_steps=budget, batch_size=s.fip_batch,
            budget=budget, seed=s.seed, save_every=10**9,
        )
        keep = objective.rank(path.end)
        out.append(sparse_result("fip", level, path.end * keep, keep, path.grad_evals, started, stop=path.stop,
                                 hint="lower --fip-lr"))
    return out
