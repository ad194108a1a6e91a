"""What was tried for the geodesic method: solvers, metrics, damping, memory, re-estimation, anchors.

One seed of a sequence (default: permuted-mnist, 5 tasks from mnist5k, domain-incremental; ``--tasks
split-mnist --scenario class`` for the class-incremental round), default MLP, the same budget of
gradient evaluations per task as every method of ``weightgeo continual``, the test split. Prints one
line per variant (scores, the budget spent per task, the accuracy matrix) and appends it to ``--out``
(JSON lines).

    .venv/bin/python benchmarks/continual_variants.py --out /tmp/cl_variants.jsonl
    .venv/bin/python benchmarks/continual_variants.py --tasks split-mnist --scenario class \\
        --set class --out /tmp/cl_class_variants.jsonl --seed 0

The class-incremental round uses three exploratory pieces defined here (not library methods):
K-FAC rebuilt from ``k`` random output directions (k + 1 passes instead of C + 1), a rebuild that
refreshes only the input factors A (S kept from the task's start), and an anchor whose reference is
the outputs each stored input had when it was stored (not the task's start).
"""

from __future__ import annotations

import argparse
import json

import torch

from weightgeo.applications.continual import METHODS, ContinualSettings, run_method
from weightgeo.applications.continual.geodesic import SOLVERS, Geodesic, KroneckerSolver
from weightgeo.applications.continual.learner import Learner
from weightgeo.data.streams import RandomSubsets
from weightgeo.data.tasks import make_task_sequence
from weightgeo.metrics import KFACMetric, KroneckerMetric
from weightgeo.metrics.kfac import KroneckerBlock
from weightgeo.paths import output_distance


class SampledKronecker(KroneckerSolver):
    """K-FAC from ``k`` Gaussian output directions: a rebuild costs k + 1 passes."""

    def __init__(self, k: int) -> None:
        self.k = k

    def factorise(self, learner, theta, generator):
        metric = KFACMetric(learner.fmodel, learner.memory.inputs(), learner.settings.metric, samples=self.k,
                            generator=generator).frozen_at(theta.detach(), learner.buffers)
        return metric, metric.products


class InputFactorsOnly(KroneckerSolver):
    """At the task's start the full K-FAC; every rebuild refreshes A (a 2-pass build) and keeps S."""

    def factorise(self, learner, theta, generator):
        if learner.kept_s is None:
            metric = KroneckerMetric.build(learner.fmodel, theta, learner.memory.inputs(), learner.settings.metric,
                                           generator=generator, buffers=learner.buffers)
            learner.kept_s = {b.name: b.s for b in metric.blocks}
            return metric, metric.products
        fresh = KFACMetric(learner.fmodel, learner.memory.inputs(), "output", samples=1,
                           generator=generator).frozen_at(theta.detach(), learner.buffers)
        blocks = [KroneckerBlock(b.name, b.weight, b.bias, b.out_features, b.in_features, b.a,
                                 learner.kept_s[b.name], b.rows) for b in fresh.blocks]
        return KroneckerMetric(blocks, fresh.products), fresh.products


class GeodesicInputFactors(Geodesic):
    """The geodesic method whose rebuilds refresh only A (solver kfac-inputs)."""

    name = "geodesic-inputs"

    def before_task(self, t, theta):
        self.kept_s = None
        cost = super().before_task(t, theta)
        self.build_cost = 2  # what each rebuild costs (the steps are planned with it)
        return cost


class GeodesicStoredAnchor(Geodesic):
    """The anchor pulls each stored input's outputs back to those it had when it was stored."""

    name = "geodesic-stored-anchor"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stored: list[torch.Tensor] = []

    def after_task(self, t, theta):
        super().after_task(t, theta)
        with torch.no_grad():
            self.stored.append(self.fmodel(theta.detach(), self.memory.x[-1], self.buffers))

    def before_task(self, t, theta):
        cost = super().before_task(t, theta)
        if self.reference is not None:
            self.reference = torch.cat(self.stored)
            self.anchor_batches = RandomSubsets((self.memory.inputs(), self.reference), self.settings.batch_size,
                                                self.seed * 1000 + 600 + t)
        return cost


class AnchoredSGD(Learner):
    """Plain SGD on CE + s·D(f(x'; θ), f(x'; θ₀)), D on a memory batch: fip's loss at one evaluation per
    step (the anchor without the geodesic step)."""

    name = "sgd-anchor"
    default_strength = 10.0

    def before_task(self, t, theta):
        self.batches_of_memory = None
        if len(self.memory):
            inputs = self.memory.inputs()
            with torch.no_grad():
                reference = self.fmodel(theta.detach(), inputs, self.buffers)
            self.batches_of_memory = RandomSubsets((inputs, reference), self.settings.batch_size,
                                                   self.seed * 1000 + 600 + t)
        return 0

    def extra_loss(self, theta, batch, objective):
        if self.batches_of_memory is None:
            return None
        x, reference = self.batches_of_memory.next()
        return self.strength * output_distance(self.fmodel(theta, x, self.buffers), reference,
                                               self.settings.fip_distance)


SOLVERS.register("kfac-1", SampledKronecker(1), help="K-FAC from 1 random output direction")
SOLVERS.register("kfac-3", SampledKronecker(3), help="K-FAC from 3 random output directions")
SOLVERS.register("kfac-inputs", InputFactorsOnly(), help="rebuilds refresh A only")
for _learner in (GeodesicInputFactors, GeodesicStoredAnchor, AnchoredSGD):
    METHODS.register(_learner.name, _learner)


def geodesic(mu: float, **fields) -> tuple[str, dict]:
    return "geodesic", {"strength": {"geodesic": mu}, **fields}


VARIANTS = {
    # name: (method, ContinualSettings fields); the first round: permuted-mnist, domain
    "finetune lr 0.01": ("finetune", {}),
    "geodesic kfac output μ=0.1": geodesic(0.1),
    "geodesic kfac output μ=0.01": geodesic(0.01),
    "geodesic kfac output μ=1": geodesic(1.0),
    "geodesic kfac fisher μ=0.1": geodesic(0.1, metric="fisher"),
    "geodesic kfac output μ=0.1 memory 300": geodesic(0.1, memory=300),
    "geodesic kfac output μ=0.1 memory 20": geodesic(0.1, memory=20),
    "geodesic kfac output μ=0.1 refresh 50": geodesic(0.1, refresh=50),
    "geodesic kfac output μ=0.1 lr 0.05": geodesic(0.1, lr=0.05),
    "geodesic nystrom rank 40 μ=0.1": geodesic(0.1, solver="nystrom"),
    "geodesic nystrom rank 150 μ=0.01": geodesic(0.01, solver="nystrom", rank=150),
    "geodesic diag-fisher μ=1e-4": geodesic(1e-4, metric="diag-fisher"),
    "geodesic cg 3 iters μ=0.1": geodesic(0.1, solver="cg", cg_iters=3),
    "geodesic traverse (papers' step) ε=0.05": geodesic(1e-3, solver="traverse", cg_iters=10),
    "geodesic anchor 0 μ=0.1": geodesic(0.1, anchor=0.0),
    "geodesic anchor 1 μ=0.1": geodesic(0.1, anchor=1.0),
}

CLASS_VARIANTS = {
    # the class-incremental round (split-mnist, class): what makes the old outputs survive
    "replay": ("replay", {}),
    "fip s=10": ("fip", {}),
    "pure μ=1e-5": geodesic(1e-5, anchor=0.0),
    "pure μ=1e-4": geodesic(1e-4, anchor=0.0),
    "pure μ=1e-3": geodesic(1e-3, anchor=0.0),
    "pure μ=1e-2": geodesic(1e-2, anchor=0.0),
    "pure μ=0.1": geodesic(0.1, anchor=0.0),
    "pure fisher μ=1e-3": geodesic(1e-3, anchor=0.0, metric="fisher"),
    "pure cg μ=1e-3 (re-estimated per step)": geodesic(1e-3, anchor=0.0, solver="cg"),
    "refresh 30 μ=1e-3": geodesic(1e-3, anchor=0.0, refresh=30),
    "refresh 60 μ=1e-3": geodesic(1e-3, anchor=0.0, refresh=60),
    "refresh 30 μ=1e-2": geodesic(1e-2, anchor=0.0, refresh=30),
    "kfac-1 refresh 10 μ=1e-3": geodesic(1e-3, anchor=0.0, solver="kfac-1", refresh=10),
    "kfac-3 refresh 20 μ=1e-3": geodesic(1e-3, anchor=0.0, solver="kfac-3", refresh=20),
    "A only refresh 10 μ=1e-3": ("geodesic-inputs", {"strength": {"geodesic-inputs": 1e-3}, "anchor": 0.0,
                                                     "solver": "kfac-inputs", "refresh": 10}),
    "anchor 1 μ=1e-4": geodesic(1e-4, anchor=1.0),
    "anchor 1 μ=1e-3": geodesic(1e-3, anchor=1.0),
    "anchor 1 μ=1e-2": geodesic(1e-2, anchor=1.0),
    "anchor 1 μ=0.1": geodesic(0.1, anchor=1.0),
    "anchor 0.3 μ=1e-3": geodesic(1e-3, anchor=0.3),
    "anchor 3 μ=1e-3": geodesic(1e-3, anchor=3.0),
    "anchor 0.3 μ=1e-2": geodesic(1e-2, anchor=0.3),
    "anchor 3 μ=1e-2": geodesic(1e-2, anchor=3.0),
    "anchor 1 squared distance μ=1e-3": geodesic(1e-3, anchor=1.0, fip_distance="squared"),
    "anchor 1 μ=1e-3 refresh 60": geodesic(1e-3, anchor=1.0, refresh=60),
    "anchor to stored outputs 1 μ=0.1": ("geodesic-stored-anchor", {"strength": {"geodesic-stored-anchor": 0.1},
                                                                     "anchor": 1.0}),
    # no preconditioning: μ = 10 makes (G/μ + I)⁻¹ ≈ I, so the step is SGD on L + (S/μ)·D
    "SGD + anchor s=1 (no geodesic step)": ("sgd-anchor", {"strength": {"sgd-anchor": 1.0}}),
    "SGD + anchor s=10 (no geodesic step)": ("sgd-anchor", {"strength": {"sgd-anchor": 10.0}}),
    "SGD + anchor s=100 (no geodesic step)": ("sgd-anchor", {"strength": {"sgd-anchor": 100.0}}),
    "anchor only (μ=10, S/μ=1)": geodesic(10.0, anchor=10.0),
    "anchor only (μ=10, S/μ=10)": geodesic(10.0, anchor=100.0),
    "anchor only (μ=10, S/μ=100)": geodesic(10.0, anchor=1000.0),
}

SETS = {"domain": VARIANTS, "class": CLASS_VARIANTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="permuted-mnist")
    parser.add_argument("--scenario", default="domain")
    parser.add_argument("--set", choices=tuple(SETS), default="domain", help="which list of variants")
    parser.add_argument("--only", default=None, help="variant names separated by ';'")
    args = parser.parse_args()
    seq = make_task_sequence(args.tasks, args.scenario, 5, seed=args.seed)
    variants = SETS[args.set]
    names = args.only.split(";") if args.only else list(variants)
    for name in names:
        method, overrides = variants[name]
        result = run_method(method, seq, "mlp", ContinualSettings(**overrides), seed=args.seed)
        row = {"variant": name, "tasks": args.tasks, "scenario": args.scenario, "seed": args.seed,
               **{k: round(100 * v, 2) for k, v in result.scores.items()},
               "grad_evals_by_task": result.grad_evals, "seconds": round(result.seconds, 1),
               "threads": torch.get_num_threads(), "stop": None if result.stop is None else result.stop.reason.value,
               "matrix": [[round(100 * a, 1) for a in row[: i + 1]] for i, row in enumerate(result.matrix)]}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
