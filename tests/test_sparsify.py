"""Sparsification: methods within budget and exactly sparse, sparse checkpoints that stay sparse,
the torch.nn.utils.prune export, and the CLI end to end (with divergence and --resume after
kill -9). The metric projection's own tests are in test_weight_space_projection.py."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from weightgeo.applications.sparsify import (
    METHODS,
    SparsifySettings,
    SparsifyTask,
    load_sparse,
    save_sparse_checkpoint,
    stage_levels,
    to_pruned_module,
)
from weightgeo.cli import cli, main
from weightgeo.data import Data, load_dataset
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import OutputMetric
from weightgeo.models import build_model, load_checkpoint
from weightgeo.objectives import TargetPoint
from weightgeo.objectives.sparsity import keep_mask, measured_sparsity
from weightgeo.paths import Path as WeightPath
from weightgeo.paths import traverse
from weightgeo.training import evaluate
from weightgeo.workflows import train_model


def _tiny_task(seed: int = 0, **settings) -> SparsifyTask:
    torch.manual_seed(seed)
    model = build_model("mlp", input_size=16, hidden=[12], num_classes=3)
    x = torch.randn(96, 1, 4, 4)
    y = (x.flatten(1)[:, :3]).argmax(1)
    data = Data(x, y, 3, "toy")
    fm = FunctionalModel(model)
    settings = {"metric_batch": 32, "batch_size": 16, "obd_batch": 16, "fip_batch": 16, **settings}
    return SparsifyTask(fm, fm.theta(), data, SparsifySettings(**settings))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_exactly_sparse_and_within_budget(method: str) -> None:
    task = _tiny_task()
    levels, budget = [0.5, 0.9], 40
    results = METHODS[method](task, levels, budget)
    assert [r.sparsity for r in results] == levels
    eligible = task.eligible
    for r in results:
        zeros = int(((r.theta == 0) & eligible).sum())
        assert zeros == round(r.sparsity * int(eligible.sum()))  # the mask is exact
        assert measured_sparsity(r.theta, eligible) == zeros / int(eligible.sum())
        assert not bool((r.theta[~r.keep] != 0).any())
        assert 0 <= r.grad_evals <= budget
        assert 0 <= r.seconds < 600  # wall-clock seconds of this result
        if method not in ("magnitude",):
            assert r.grad_evals > 0
    if method == "magnitude":
        assert all(r.grad_evals == 0 for r in results)


def test_geodesic_one_path_reads_levels_in_turn() -> None:
    task = _tiny_task(one_path=True)
    results = METHODS["geodesic"](task, [0.5, 0.8, 0.9], 90)
    evals = [r.grad_evals for r in results]
    assert evals == sorted(evals) and evals[-1] <= 90
    masks = [r.keep for r in results]
    assert all(bool((b <= a).all()) for a, b in zip(masks, masks[1:]))  # nested: sparse stays sparse


def test_stage_levels_insert_gradual_stages() -> None:
    stages = stage_levels([0.5, 0.98], ratio=2.2)
    levels = [s for s, _ in stages]
    assert levels == sorted(levels) and levels[-1] == 0.98
    assert [r for _, r in stages if r is not None] == [0.5, 0.98]
    densities = [1.0] + [1 - s for s in levels]
    assert all(a / b <= 2.2 + 1e-9 for a, b in zip(densities, densities[1:]))


def test_sparse_checkpoint_reloads_sparse_and_stays_sparse_through_a_traversal(tmp_path: Path) -> None:
    task = _tiny_task()
    (result,) = METHODS["magnitude"](task, [0.8], 0)
    file = save_sparse_checkpoint(
        tmp_path / "sparse.pt", task.fmodel, result.theta, result.keep, name="mlp",
        config={"input_size": 16, "hidden": [12], "num_classes": 3}, dataset="toy", test_accuracy=None,
    )
    net = load_sparse(file)
    assert torch.equal(net.keep, result.keep)
    assert torch.equal(net.theta, result.theta)
    eligible = net.fmodel.weight_mask()
    assert net.checkpoint.extra["sparsity"] == int(((net.theta == 0) & eligible).sum()) / int(eligible.sum())
    # a further traversal (toward a dense point, output metric) on the masked space
    space = WeightSpace(net.fmodel, OutputMetric(net.fmodel, task.train.x[:32]), mask=net.keep)
    path = traverse(space, TargetPoint(1.5 * task.theta), step_size=0.05, max_steps=15, start=net.theta)
    assert path.end is not None and not torch.equal(path.end, net.theta)  # it moved
    assert bool((path.end[~net.keep] == 0).all())  # and stayed sparse
    assert measured_sparsity(path.end, eligible) == net.checkpoint.extra["sparsity"]


def test_prune_export_gives_the_same_outputs(tmp_path: Path) -> None:
    task = _tiny_task()
    (result,) = METHODS["magnitude-finetune"](task, [0.75], 20)
    module = to_pruned_module(task.fmodel, result.theta, result.keep)
    names = {n for n, _ in module.named_buffers()}
    assert {"layers.0.weight_mask", "layers.2.weight_mask"} <= names
    assert "layers.0.weight_orig" in dict(module.named_parameters())
    x = task.train.x[:20]
    with torch.no_grad():
        expected = task.fmodel(result.theta, x)
        assert torch.allclose(module(x), expected, atol=1e-6)
        torch.nn.utils.prune.remove(module.layers[0], "weight")
        assert torch.allclose(module(x), expected, atol=1e-6)
    # the file round trip gives the same module
    file = save_sparse_checkpoint(
        tmp_path / "s.pt", task.fmodel, result.theta, result.keep, name="mlp",
        config={"input_size": 16, "hidden": [12], "num_classes": 3}, dataset="toy", test_accuracy=None,
    )
    net = load_sparse(file)
    again = to_pruned_module(net.fmodel, net.theta, net.keep)
    with torch.no_grad():
        assert torch.allclose(again(x), expected, atol=1e-6)


def _error_line(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mlp")
    train_model("mlp", "mnist5k", out, config={"hidden": [16]}, epochs=1, seed=0, device="cpu", overwrite=True)
    return out


@pytest.mark.parametrize(("argv", "needle"), [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--sparsity", "abc"], "sparsity"),
    (["--method", "magnitude,prune-everything"], "method"),
    (["--budget", "-5"], "budget"),
])
def test_bad_options_are_refused_in_one_line(tiny_checkpoint, tmp_path, capsys, argv, needle) -> None:
    err = _error_line(capsys, ["sparsify", str(tiny_checkpoint), "--out", str(tmp_path / "o"), *argv])
    assert err.startswith("Error:") and needle in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_cli_end_to_end_on_mnist5k(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "sparsify", str(tiny_checkpoint), "--sparsity", "0.5,0.9", "--method", "geodesic,magnitude,magnitude-distill",
        "--budget", "12,24", "--metric-batch", "64", "--device", "cpu", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 3 * 2 * 2
    assert set(rows[0]) >= {"method", "sparsity", "budget", "measured_sparsity", "test_accuracy", "test_loss",
                            "grad_evals", "seconds"}
    for row in rows:
        assert int(row["grad_evals"]) <= int(row["budget"])
        assert float(row["measured_sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1e-4)
    for name in ("results.md", "summary.md", "accuracy_vs_sparsity_b12.png", "accuracy_vs_budget_s90.png",
                 "geodesic_path_b24.png", "checkpoints/geodesic_s90_b24.pt"):
        assert (out / name).exists(), name
    net = load_sparse(out / "checkpoints" / "geodesic_s90_b24.pt")
    eligible = net.fmodel.weight_mask()
    assert measured_sparsity(net.theta, eligible) == pytest.approx(0.9, abs=1e-4)
    # the numbers: the table holds what its networks score, and the geodesic beats one-shot pruning
    table = {(r["method"], float(r["sparsity"]), int(r["budget"])): r for r in rows}
    test = load_dataset("mnist5k", "test")
    scores = evaluate(net.fmodel, net.theta, test)
    assert float(table["geodesic", 0.9, 24]["test_accuracy"]) == pytest.approx(scores["accuracy"], abs=1e-9)
    assert float(table["geodesic", 0.9, 24]["test_loss"]) == pytest.approx(scores["loss"], rel=1e-5)
    dense = load_checkpoint(tiny_checkpoint)
    fm = FunctionalModel(dense.model)
    theta0 = fm.theta()
    pruned = theta0 * keep_mask(theta0.abs(), eligible, 0.9)  # one-shot magnitude pruning, by hand
    by_hand = evaluate(fm, pruned, test)
    for budget in (12, 24):
        magnitude = table["magnitude", 0.9, budget]
        assert float(magnitude["test_accuracy"]) == pytest.approx(by_hand["accuracy"], abs=1e-9)
        assert float(magnitude["test_loss"]) == pytest.approx(by_hand["loss"], rel=1e-5)
        assert int(magnitude["grad_evals"]) == 0
        for method in ("geodesic", "magnitude-distill"):
            row = table[method, 0.9, budget]
            assert int(row["grad_evals"]) == budget and row["labels"] == "no"
            assert float(row["test_loss"]) < float(magnitude["test_loss"]) - 0.02
        assert float(table["geodesic", 0.9, budget]["test_accuracy"]) >= float(magnitude["test_accuracy"])


def test_vgg11_on_fake_cifar_end_to_end(tmp_path) -> None:
    root = write_fake_cifar(tmp_path / "data", "cifar10", n_train=32, n_test=16, seed=0)
    with fake_cifar_checksums():
        train_model("vgg11", "cifar10", tmp_path / "vgg", config={"width": 0.0625}, epochs=1, batch_size=16,
                    data_root=str(root), seed=0, device="cpu", overwrite=True)
        result = CliRunner().invoke(cli, [
            "sparsify", str(tmp_path / "vgg"), "--sparsity", "0.5,0.9", "--method",
            "geodesic,obd", "--budget", "12", "--metric-batch", "8", "--cg-iters", "2", "--one-path",
            "--data-root", str(root), "--device", "cpu", "--out", str(tmp_path / "run"),
        ])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert len(rows) == 2 * 2
    for row in rows:
        assert float(row["measured_sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1e-4)
    spent = {(r["method"], float(r["sparsity"])): int(r["grad_evals"]) for r in rows}
    # obd: 10 (one per class) + 2 fine-tuning steps at each level; one geodesic path read off at
    # the evaluations spent to reach each level, the whole budget at the last
    assert spent["obd", 0.5] == spent["obd", 0.9] == 12
    assert 0 < spent["geodesic", 0.5] < spent["geodesic", 0.9] == 12
    net = load_sparse(tmp_path / "run" / "checkpoints" / "obd_s90_b12.pt")
    assert net.fmodel.has_batch_norm
    assert measured_sparsity(net.theta, net.fmodel.weight_mask()) == pytest.approx(0.9, abs=1e-4)


def test_papers_natural_gradient_step_is_exact_and_within_budget() -> None:
    task = _tiny_task(step="natural-gradient", cg_iters=3, step_size=0.2, path_share=0.6)
    results = METHODS["geodesic"](task, [0.5, 0.9], 60)
    for r in results:
        zeros = int(((r.theta == 0) & task.eligible).sum())
        assert zeros == round(r.sparsity * int(task.eligible.sum()))
        assert 0 < r.grad_evals <= 60
    assert results[-1].path is not None and len(results[-1].path) > 3  # traverse took steps


@pytest.mark.parametrize("metric", ["fisher", "diag-fisher", "euclidean"])
def test_geodesic_under_every_metric_is_exact_and_within_budget(metric: str) -> None:
    task = _tiny_task(metric=metric)
    for budget in (5, 40):
        for r in METHODS["geodesic"](task, [0.5, 0.9], budget):
            zeros = int(((r.theta == 0) & task.eligible).sum())
            assert zeros == round(r.sparsity * int(task.eligible.sum()))
            assert r.grad_evals <= budget


def test_diverging_methods_exit_3_with_one_line_each_and_the_other_rows_written(tiny_checkpoint, tmp_path,
                                                                                  capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["sparsify", str(tiny_checkpoint), "--sparsity", "0.5,0.9", "--method",
              "fip,magnitude,magnitude-finetune", "--budget", "12", "--fip-lr", "1e30", "--lr-finetune", "1e30",
              "--device", "cpu", "--out", str(out)])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 2, err  # one line per method, not per result
    assert lines[0].startswith("Error: fip at 50% sparsity stopped at step") and "— lower --fip-lr" in lines[0]
    assert lines[1].startswith("Error: magnitude-finetune at 50% sparsity stopped at step 1: non-finite loss")
    assert "(2 of its results diverged)" in lines[1]
    assert "— lower --lr-finetune" in lines[1]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["stop_reason"]) for r in rows] == [
        ("fip", "non-finite"), ("fip", "non-finite"), ("magnitude", "done"), ("magnitude", "done"),
        ("magnitude-finetune", "non-finite"), ("magnitude-finetune", "non-finite")]
    for row in rows:
        assert float(row["measured_sparsity"]) == pytest.approx(float(row["sparsity"]), abs=1e-4)  # still exact
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert bool(row["stop_message"]) == (row["stop_reason"] == "non-finite")
    # no checkpoint of a diverged result; the others are finite
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["magnitude_s50_b12.pt", "magnitude_s90_b12.pt"]
    for name in saved:
        assert bool(torch.isfinite(load_sparse(out / "checkpoints" / name).theta).all())
    assert "Stopped on a non-finite value" in (out / "summary.md").read_text()


_KILL_MID_PATH = """
import os, signal, sys
from weightgeo.paths.path import Path
append = Path.append
def append_then_die(self, theta, **record):
    k = append(self, theta, **record)
    if self.directory is not None and k == 3:  # half-way through the first path written to disk
        os.kill(os.getpid(), signal.SIGKILL)
    return k
Path.append = append_then_die
from weightgeo.cli import main
main(sys.argv[1:])
"""


def _table(out: Path) -> list[dict]:
    """results.csv without its wall-clock column (the one column that differs between runs)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(out / "results.csv"))]


def test_a_run_killed_half_way_and_resumed_gives_the_uninterrupted_results(tiny_checkpoint, tmp_path) -> None:
    args = ["sparsify", str(tiny_checkpoint), "--sparsity", "0.5,0.9", "--method", "magnitude-distill,geodesic",
            "--budget", "12", "--metric-batch", "64", "--device", "cpu"]
    whole = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same thread count
    killed = subprocess.run([sys.executable, "-c", _KILL_MID_PATH, *args, "--out", str(tmp_path / "cut")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut = tmp_path / "cut"
    finished = [json.loads(line)["unit"] for line in (cut / "units.jsonl").read_text().splitlines()]
    assert finished == ["magnitude-distill/b12", "geodesic/b12"]  # killed inside geodesic-path/b12
    assert not (cut / "results.csv").exists() and (cut / "geodesic_path_b12" / "metrics.jsonl").exists()
    resumed = CliRunner().invoke(cli, [*args, "--out", str(cut), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "geodesic/b12 already done (resumed)" in resumed.output
    assert _table(cut) == _table(tmp_path / "whole") and len(_table(cut)) == 2 * 2
    records = (cut / "geodesic_path_b12" / "metrics.jsonl").read_text()  # the restarted path is the whole one
    assert records == (tmp_path / "whole" / "geodesic_path_b12" / "metrics.jsonl").read_text()
    for name in sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir()):
        assert torch.equal(load_sparse(cut / "checkpoints" / name).theta,
                           load_sparse(tmp_path / "whole" / "checkpoints" / name).theta), name


def test_demo_section_sparsify_quick(tmp_path) -> None:
    from types import SimpleNamespace

    from weightgeo.applications.sparsify.demo import section_sparsify

    train = load_dataset("mnist5k", "train").subset(torch.arange(256))
    test = load_dataset("mnist5k", "test").subset(torch.arange(128))
    torch.manual_seed(0)
    model = build_model("mlp", hidden=[16, 8])
    ctx = SimpleNamespace(out=tmp_path, quick=True, seed=0, train=train, test=test, device=torch.device("cpu"),
                          models={"a": {"model": model, "theta": FunctionalModel(model).theta()}},
                          log=lambda msg: None)
    text = section_sparsify(ctx)
    assert text.startswith("## Sparsification") and (tmp_path / "sparsify.png").exists()
    table = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert [cells[0].strip() for cells in table] == ["50%", "80%", "90%"]
    geodesic = [int(cells[1].split("(")[1].rstrip(") ")) for cells in table]
    assert geodesic == sorted(geodesic) and geodesic[-1] == 60  # one path read off at its cumulative count
    assert all(int(cells[2].split("(")[1].rstrip(") ")) == 60 for cells in table)  # the full budget per level
    path = WeightPath.load(tmp_path / "sparsify_path")
    assert path.stop_reason == "done" and path.grad_evals == 60
    assert [stage["name"] for stage in path.stages if stage["name"].startswith("sparsity")][-1] == "sparsity 0.9"
