"""connect: methods, evaluation, rebasin, and the command end to end (tiny models, fake data)."""

from __future__ import annotations

import csv

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from weightgeo.applications.connect import (
    Bezier,
    ConnectSettings,
    ConnectTask,
    Polyline,
    mlp_layers,
    permute_mlp,
    run_method,
    summarise,
    weight_matching,
)
from weightgeo.cli import cli, main
from weightgeo.data import Data
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model
from weightgeo.models.checkpoint import load_checkpoint, save_checkpoint
from weightgeo.workflows import load_with_data, train_model


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def _data(n: int = 64, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 3, generator=g)  # Data holds images: N×C×H×W
    flat = x.flatten(1)
    y = (flat[:, 0] > 0).long() + (flat[:, 1] > 0).long()
    return Data(x, y, 3, "toy")


def test_rebasin_permutation_preserves_the_function():
    fm = FunctionalModel(_mlp(0))
    theta_a, theta_b = fm.theta(), FunctionalModel(_mlp(1)).theta()
    x = torch.randn(20, 6)
    perms = [torch.randperm(8), torch.randperm(5)]
    torch.testing.assert_close(fm(permute_mlp(fm, theta_b, perms), x), fm(theta_b, x))
    matched, found = weight_matching(fm, theta_a, theta_b)
    torch.testing.assert_close(fm(matched, x), fm(theta_b, x), atol=1e-6, rtol=1e-5)
    assert [sorted(p.tolist()) for p in found] == [list(range(8)), list(range(5))]
    # Matching brings θ_b closer to θ_a (never farther: the identity is a candidate).
    assert float((matched - theta_a).norm()) <= float((theta_b - theta_a).norm()) + 1e-6


def test_rebasin_recovers_a_hidden_permutation():
    fm = FunctionalModel(_mlp(0))
    theta_a = fm.theta()
    perms = [torch.randperm(8, generator=torch.Generator().manual_seed(3)),
             torch.randperm(5, generator=torch.Generator().manual_seed(4))]
    shuffled = permute_mlp(fm, theta_a, perms)
    assert float((shuffled - theta_a).norm()) > 0.1
    matched, _ = weight_matching(fm, theta_a, shuffled)
    torch.testing.assert_close(matched, theta_a)


def test_rebasin_refuses_other_architectures_in_one_line():
    cnn = FunctionalModel(build_model("small-cnn"))
    with pytest.raises(WeightgeoError, match="rebasin supports MLPs") as err:
        mlp_layers(cnn, "small-cnn")
    assert "\n" not in str(err.value)


def test_curves_sample_evenly_by_arc_length():
    a, b = torch.zeros(3, dtype=torch.float64), torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64)
    line = Polyline([a, b])
    pts, _ = line.sample(5)
    torch.testing.assert_close(pts[:, 0], torch.linspace(0, 4, 5, dtype=torch.float64))
    assert line.euclidean_length() == pytest.approx(4.0)
    bezier = Bezier(a, torch.tensor([2.0, 3.0, 0.0], dtype=torch.float64), b, resolution=2000)
    pts, _ = bezier.sample(11)
    gaps = (pts[1:] - pts[:-1]).norm(dim=-1)
    assert float(gaps.max() / gaps.min()) < 1.01  # chords of equal arcs on a gentle curve
    torch.testing.assert_close(pts[0], a)
    torch.testing.assert_close(pts[-1], b)
    assert bezier.euclidean_length() > float(gaps.sum())  # the arc is longer than its chords


def test_summarise_barriers():
    rows = [{"test_loss": loss, "test_accuracy": a} for loss, a in
            [(0.2, 0.95), (0.5, 0.90), (0.3, 0.94), (0.25, 0.94)]]
    s = summarise(rows)
    assert s["loss_barrier"] == pytest.approx(0.5 - 0.225)
    assert s["min_test_accuracy"] == pytest.approx(90.0)
    assert s["max_accuracy_drop"] == pytest.approx(4.0)
    assert s["error_barrier"] == pytest.approx(10.0 - 5.5)


def _setting(metric: str, **kw) -> ConnectTask:
    fm = FunctionalModel(_mlp(0))
    train = _data()
    kw.setdefault("step_size", None)  # 1% of ||θ_b − θ_a|| (the Python default before the port)
    return ConnectTask(fm, fm.theta(), FunctionalModel(_mlp(1)).theta(), train, _data(32, 1),
                       ConnectSettings(metric=metric, **kw), metric_inputs=train.x[:16])


def test_euclidean_traverse_reaches_theta_b_along_the_straight_line():
    s = _setting("euclidean", traverse_weight=0.0, budget=400, tol=1e-9)
    result = run_method("traverse", s)
    vertices = result.curve.vertices
    torch.testing.assert_close(vertices[-1], s.theta_b)
    direction = (s.theta_b - s.theta_a) / (s.theta_b - s.theta_a).norm()
    offsets = vertices - s.theta_a
    off_line = offsets - (offsets @ direction)[:, None] * direction
    assert float(off_line.norm(dim=-1).max()) < 1e-5
    distance = float((s.theta_b - s.theta_a).norm())
    assert result.path.euclidean_length == pytest.approx(distance, rel=1e-5)
    assert result.info["final_segment_length"] < 1e-5  # it got there by itself


@pytest.fixture(scope="module")
def tiny_vgg_runs(tmp_path_factory):
    """Two tiny VGG16 checkpoints trained on a fake CIFAR-10 (different seeds)."""
    root = write_fake_cifar(tmp_path_factory.mktemp("data"), "cifar10", n_train=32, n_test=16)
    runs = tmp_path_factory.mktemp("runs")
    with fake_cifar_checksums():
        for seed in (0, 1):
            train_model("vgg16", "cifar10", runs / f"vgg_{seed}", config={"width": 1 / 32}, epochs=1,
                        batch_size=16, data_root=str(root), seed=seed, device="cpu")
    return root, runs


def test_connect_command_end_to_end_on_fake_cifar_vgg16(tiny_vgg_runs, tmp_path):
    root, runs = tiny_vgg_runs
    out = tmp_path / "connect"
    with fake_cifar_checksums():
        result = CliRunner().invoke(cli, [
            "connect", str(runs / "vgg_0"), str(runs / "vgg_1"), "--method",
            "linear,traverse,relax,bezier,polychain", "--budget", "12", "--nodes", "2", "--points", "3", "--no-train-eval",
            "--plane-grid", "2", "--batch-size", "16", "--metric-batch", "8", "--cg-iters", "2",
            "--data-root", str(root), "--device", "cpu", "--out", str(out),
        ])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == ["linear", "traverse", "relax", "bezier", "polychain"]
    for column in ("min_test_accuracy", "max_accuracy_drop", "loss_barrier", "euclidean_length",
                   "metric_length", "grad_evals", "seconds"):
        assert all(r[column] != "" for r in rows), column
    spent = {r["method"]: int(r["grad_evals"]) for r in rows}
    assert spent["linear"] == 0 and all(0 < spent[m] <= 12 for m in ("traverse", "relax", "bezier", "polychain"))
    for name in ("results.md", "along_paths.png", "plane.png", "evaluation.csv", "config.json"):
        assert (out / name).exists(), name
    for method in ("traverse", "relax", "bezier"):
        assert (out / "paths" / method / "path.json").exists()
    evaluation = list(csv.DictReader((out / "evaluation.csv").open()))
    assert len(evaluation) == 5 * 3
    # The numbers: every path is evaluated with batch-norm statistics recomputed on the training
    # data at each point (by hand below), and the barriers of results.csv are those of its points.
    with fake_cifar_checksums():
        loaded = load_with_data(runs / "vgg_0", data_root=str(root), device="cpu")
    theta_a = loaded.theta
    theta_b = loaded.fmodel.flatten(load_checkpoint(runs / "vgg_1").model)
    hand = {t: _test_loss_with_recomputed_bn(loaded, theta_a + t * (theta_b - theta_a)) for t in (0.0, 0.5, 1.0)}
    stale = _test_loss_with_stored_bn(loaded, 0.5 * (theta_a + theta_b))
    assert abs(hand[0.5] - stale) > 1e-3  # recomputing matters at the midpoint
    for row in evaluation:
        if row["point"] in ("0", "2"):
            assert float(row["test_loss"]) == pytest.approx(hand[0.0 if row["point"] == "0" else 1.0], rel=1e-4)
    linear = [float(r["test_loss"]) for r in evaluation if r["method"] == "linear"]
    assert linear[1] == pytest.approx(hand[0.5], rel=1e-4)
    for row in rows:
        losses = [float(r["test_loss"]) for r in evaluation if r["method"] == row["method"]]
        accuracies = [100 * float(r["test_accuracy"]) for r in evaluation if r["method"] == row["method"]]
        assert float(row["loss_barrier"]) == pytest.approx(max(losses) - 0.5 * (losses[0] + losses[-1]), abs=1e-5)
        assert float(row["min_test_accuracy"]) == pytest.approx(min(accuracies), abs=1e-5)
    assert spent["relax"] == 12 and spent["bezier"] == 12 and spent["polychain"] == 12  # all of it
    assert float(rows[0]["euclidean_length"]) == pytest.approx(float((theta_b - theta_a).norm()), rel=1e-5)


def _test_loss_with_recomputed_bn(loaded, theta) -> float:
    """Test loss of θ after one train-mode pass over the training data (cumulative statistics)."""
    module = loaded.fmodel.to_module(theta)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        module.train()(loaded.train.x)
        return float(nn.functional.cross_entropy(module.eval()(loaded.test.x), loaded.test.y))


def _test_loss_with_stored_bn(loaded, theta) -> float:
    module = loaded.fmodel.to_module(theta, loaded.fmodel.buffers)
    with torch.no_grad():
        return float(nn.functional.cross_entropy(module.eval()(loaded.test.x), loaded.test.y))


def test_connect_refuses_rebasin_for_vgg_and_different_architectures(tiny_vgg_runs, tmp_path, capsys):
    root, runs = tiny_vgg_runs
    with fake_cifar_checksums(), pytest.raises(SystemExit) as exit_info:
        main(["connect", str(runs / "vgg_0"), str(runs / "vgg_1"), "--method", "rebasin",
              "--data-root", str(root), "--device", "cpu", "--out", str(tmp_path / "a")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: rebasin supports MLPs") and "\n" not in err
    mlp = build_model("mlp", hidden=[8])
    other = save_checkpoint(tmp_path / "mlp.pt", mlp, "mlp", {"input_size": 784, "hidden": [8], "num_classes": 10},
                            "mnist5k", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", str(runs / "vgg_0"), str(other), "--out", str(tmp_path / "b")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: checkpoints differ in architecture") and "\n" not in err


def test_demo_section_connect_quick(tmp_path):
    from types import SimpleNamespace

    from weightgeo.applications.connect.demo import section_connect
    from weightgeo.data import load_dataset

    train = load_dataset("mnist5k", "train").subset(torch.arange(256))
    test = load_dataset("mnist5k", "test").subset(torch.arange(128))
    models = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        model = build_model("mlp", hidden=[16, 8])
        models[name] = {"model": model, "theta": FunctionalModel(model).theta()}
    ctx = SimpleNamespace(out=tmp_path, quick=True, seed=0, train=train, test=test, models=models,
                          log=lambda msg: None)
    text = section_connect(ctx)
    assert text.startswith("## Connecting the two networks")
    assert "| rebasin |" in text and "| relax |" in text
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "connect" / "results.csv").open())}
    distance = float((models["b"]["theta"] - models["a"]["theta"]).norm())
    assert float(rows["linear"]["euclidean_length"]) == pytest.approx(distance, rel=1e-5)
    assert float(rows["rebasin"]["euclidean_length"]) < distance  # matching moves θ_b closer
    assert int(rows["relax"]["grad_evals"]) == 100 and int(rows["linear"]["grad_evals"]) == 0
    assert f"| relax | {float(rows['relax']['min_test_accuracy']):.6g} |" in text  # the table shows them
