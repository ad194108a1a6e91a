"""Data parallelism: two gloo ranks on the CPU give the single-process results on the whole batch.

Two processes (loopback only) each evaluate their shard of every batch; the products, solves,
gradients, a 20-step traverse, the output-geodesic loss, relax's image fit and a few steps of training
must equal one process on the
concatenated batch (float64, to 1e-10), with uneven shards (7 examples: 4 + 3).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from weightgeo import distributed

WORLD = 2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(7, 5, dtype=torch.float64, generator=generator), torch.randint(0, 3, (7,), generator=generator)


def computations() -> dict[str, torch.Tensor]:
    """Everything checked, computed the same way by one process and by each rank."""
    from weightgeo import (
        DiagonalFisher,
        FunctionalModel,
        OutputMetric,
        TargetPoint,
        TaskLoss,
        WeightSpace,
        traverse,
    )
    from weightgeo.data.streams import Fixed
    from weightgeo.evaluation import loss_and_correct
    from weightgeo.metrics import KFACMetric
    from weightgeo.metrics.scaled import ScaledMetric
    from weightgeo.objectives import OutputGeodesicLoss
    from weightgeo.optim import OptimizerSpec, SupervisedLoss, fit
    from weightgeo.paths import relax

    model = _model()
    fm = FunctionalModel(model)
    theta = fm.theta()
    x, y = _data()
    v = torch.randn(fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out: dict[str, torch.Tensor] = {}
    metric = OutputMetric(fm, x)
    out["mvp"] = metric.mvp(theta, v)
    out["warm product"] = metric.at(theta) @ v
    space = WeightSpace(fm, metric, damping=1e-2, cg_maxiter=30, cg_tol=1e-12)
    out["solve"] = space.natural_gradient(theta, v).x
    force, speed_sq, _ = metric.at(theta).geodesic_force(v)
    out["geodesic force"], out["speed"] = force, speed_sq
    out["diagonal Fisher"] = DiagonalFisher(fm, x).diagonal(theta)
    kfac = KFACMetric(fm, x, samples=2, generator=torch.Generator().manual_seed(3))
    out["K-FAC product"] = kfac.at(theta) @ v
    out["K-FAC solve"] = kfac.at(theta).solve(v, 0.1).x
    out["examples seen by this rank"] = torch.tensor(float(len(metric.local_inputs)))
    value, grad = TaskLoss(fm, (x, y)).value_and_grad(theta)
    out["task loss"], out["task gradient"] = value, grad
    target = theta + 0.3 * v
    path = traverse(space, TargetPoint(target), step_size=0.05, max_steps=20, start=theta)
    out["traverse end"], out["traverse metric length"] = path.end, torch.tensor(path.metric_length)
    image = OutputGeodesicLoss(metric, theta, target, x)
    out["output geodesic loss"], out["output geodesic gradient"] = image.value_and_grad(theta + 0.1 * v)
    scaled = WeightSpace(fm, ScaledMetric(metric, 2.0))  # a wrapper passes the shard on unsplit too
    cases = (("image", space, x, 0), ("energy", space, x, 0), ("scaled energy", scaled, x, 0),
             ("own-batch energy", space, None, 0), ("reparametrised energy", space, x, 2))
    for objective, where, inputs, every in cases:
        # the loop shards the batch once (the metric's own batch too); the metric must not split it again,
        # and the reparametrisation's arc lengths are the same on every rank
        relaxed = relax(where, theta, target, nodes=2, inputs=inputs, objective=objective.split()[-1], steps=5,
                        lr=1e-2, reparametrize_every=every, damping=0.01 * every)
        out[f"relax {objective} nodes"] = torch.stack([w for _, w in relaxed.waypoints()])
        out[f"relax {objective} lengths"] = torch.tensor([float(r["metric_length"]) for r in relaxed.records],
                                                         dtype=torch.float64)
    trained = fit(theta, SupervisedLoss(fm), Fixed((x, y)), 10, optimizer=OptimizerSpec("sgd", lr=0.1))
    out["fit"] = trained.param
    total, correct = loss_and_correct(fm, theta, type("D", (), {"x": x, "y": y})())
    out["evaluation"] = torch.stack([total, correct.double()])
    return out


def _worker(rank: int, init_file: str, result_file: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = computations()
        distributed.check_same(result["traverse end"], "the traverse's end")
        torch.save(result, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder / "result")), nprocs=WORLD, join=True)
    return [torch.load(f"{folder / 'result'}.{r}", weights_only=True) for r in range(WORLD)]


def test_shards_split_unevenly_but_completely():
    parts = [distributed.bounds(7, 2, r) for r in range(2)]
    assert parts == [(0, 4), (4, 7)]
    assert [distributed.bounds(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_whole_batch(ranks):
    single = computations()
    # the work is shared: rank 0 evaluates 4 examples, rank 1 the other 3
    assert [float(r.pop("examples seen by this rank")) for r in ranks] == [4.0, 3.0]
    assert float(single.pop("examples seen by this rank")) == 7.0
    for name, expected in single.items():
        for r, result in enumerate(ranks):
            torch.testing.assert_close(result[name], expected, rtol=1e-10, atol=1e-12,
                                       msg=lambda m, name=name, r=r: f"{name} on rank {r}: {m}")


@pytest.mark.slow
def test_a_command_under_torchrun_gives_the_single_process_results(tmp_path):
    """torchrun --standalone --nproc-per-node 2 -m weightgeo sparsify …: the same numbers and costs."""
    import csv
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    python = [sys.executable, "-m"]
    subprocess.run([*python, "weightgeo", "train", "--hidden", "16", "--epochs", "2", "--device", "cpu",
                    "--out", str(tmp_path / "mlp")], check=True, env=env, capture_output=True)
    command = ["weightgeo", "sparsify", str(tmp_path / "mlp"), "--sparsity", "0.9", "--budget", "30",
               "--method", "geodesic,magnitude-distill", "--metric-batch", "64", "--device", "cpu"]
    subprocess.run([*python, *command, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    launched = subprocess.run([*python, "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                               *command, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-2000:]

    def rows(folder):
        with open(tmp_path / folder / "results.csv") as handle:
            return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]

    one, two = rows("one"), rows("two")
    assert [r["grad_evals"] for r in one] == [r["grad_evals"] for r in two]
    for a, b in zip(one, two, strict=True):
        assert abs(float(a["test_accuracy"]) - float(b["test_accuracy"])) <= 0.002
