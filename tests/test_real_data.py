"""Real-data checks on the embedded mnist5k digits with the default MLP."""

from __future__ import annotations

import json

import torch

from weightgeo import Euclidean, FunctionalModel, OutputMetric, TargetPoint, WeightSpace, traverse
from weightgeo.applications.sparsify import METHODS, SparsifySettings, SparsifyTask
from weightgeo.data import Data, load_dataset
from weightgeo.training import evaluate


def test_default_mlp_reaches_94_percent(mnist5k_mlps):
    for result in mnist5k_mlps.values():
        assert result["test_accuracy"] >= 0.94
        run = result["checkpoint"].parent
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, 9))
        assert {"epoch", "train_loss", "test_loss", "test_accuracy"} <= set(rows[-1])
        assert rows[-1]["test_accuracy"] == result["test_accuracy"]
        assert (run / "training_curves.png").stat().st_size > 0


def test_output_metric_path_keeps_accuracy_better_than_the_straight_line(mnist5k_mlps):
    """Toward a second MLP, the output-metric path loses less test accuracy than the line."""
    a, b = mnist5k_mlps["a"], mnist5k_mlps["b"]
    fmodel = FunctionalModel(a["model"])
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    generator = torch.Generator().manual_seed(0)
    batches = [train.x[torch.randperm(len(train), generator=generator)[:256]] for _ in range(20)]
    distance = float(torch.linalg.vector_norm(b["theta"] - a["theta"]))
    step = distance / 60

    def accuracy(theta):
        return {"test_accuracy": evaluate(fmodel, theta, test)["accuracy"]}

    worst = {}
    for name, metric in (("output", OutputMetric(fmodel, batches[0])), ("euclidean", Euclidean())):
        space = WeightSpace(fmodel, metric, damping=1e-3, cg_maxiter=10)
        path = traverse(space, TargetPoint(b["theta"], tol=1e-3 * distance), step_size=step,
                        max_steps=400, start=a["theta"], evaluate=accuracy, evaluate_every=4,
                        metric_inputs=batches if name == "output" else None)
        accuracies = [r["test_accuracy"] for r in path.records if "test_accuracy" in r]
        worst[name] = min(accuracies)
        assert path.stop_reason == "done"
        if name == "euclidean":
            assert abs(path.euclidean_length - distance) < 1e-3 * distance
        else:
            assert path.euclidean_length > distance  # it bends away from the line
    endpoints = min(a["test_accuracy"], b["test_accuracy"])
    assert worst["euclidean"] < endpoints - 0.02  # the line crosses a barrier
    assert worst["output"] > worst["euclidean"] + 0.005


def test_label_free_geodesic_at_90_percent_beats_one_shot_magnitude_pruning(mnist5k_mlps):
    """At 90% sparsity and a budget of 24 (one projection of 11 products, then 13 distillation
    steps), the geodesic (given shuffled labels: it must not need them) keeps more test
    accuracy and a lower test loss than one-shot magnitude pruning of the same network."""
    a = mnist5k_mlps["a"]
    fmodel = FunctionalModel(a["model"])
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    generator = torch.Generator().manual_seed(0)
    shuffled = Data(train.x, train.y[torch.randperm(len(train), generator=generator)], train.num_classes, "shuffled")
    task = SparsifyTask(fmodel, a["theta"], shuffled, SparsifySettings(cg_iters=10, metric_batch=256))
    (geodesic,) = METHODS["geodesic"](task, [0.9], 24)
    (magnitude,) = METHODS["magnitude"](task, [0.9], 0)
    assert geodesic.grad_evals == 24 and magnitude.grad_evals == 0
    assert geodesic.measured_sparsity(task.eligible) == magnitude.measured_sparsity(task.eligible)
    geo, mag = evaluate(fmodel, geodesic.theta, test), evaluate(fmodel, magnitude.theta, test)
    assert geo["accuracy"] >= mag["accuracy"]
    assert geo["loss"] < mag["loss"] - 0.01
