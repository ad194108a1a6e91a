"""Split CIFAR-10 / CIFAR-100 task sequences on fake files in torchvision's format, and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner

from weightgeo.cli import cli
from weightgeo.data import load_dataset, make_task_sequence
from weightgeo.data.tasks import permutations
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar
from weightgeo.errors import WeightgeoError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Fake CIFAR-10 (200/100 images) and CIFAR-100 (400/200: 4 and 2 of every class)."""
    where = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(where, "cifar10", n_train=200, n_test=100, seed=0)
    write_fake_cifar(where, "cifar100", n_train=400, n_test=200, seed=1)
    return where


@pytest.fixture(autouse=True)
def _unchecked_cifar():
    with fake_cifar_checksums():
        yield


def _sequence(root, name, scenario, n_tasks=None, **kwargs):
    return make_task_sequence(name, scenario, n_tasks, root=root, **kwargs)


def test_split_cifar10_tasks_hold_pairs_of_classes(root):
    base = load_dataset("cifar10", "test", root=root)
    task = _sequence(root, "split-cifar10", "task")
    assert len(task) == 5 and task.num_outputs == 10 and task.base == "cifar10"
    for i, t in enumerate(task.tasks):
        pair = (2 * i, 2 * i + 1)
        assert t.classes == pair and t.units == pair and t.name == f"classes {2 * i}/{2 * i + 1}"
        keep = (base.y == pair[0]) | (base.y == pair[1])
        assert torch.equal(t.test.x, base.x[keep]) and torch.equal(t.test.y, base.y[keep])
        assert set(t.train.y.tolist()) | set(t.val.y.tolist()) == set(pair)
        assert task.allowed(i).nonzero().flatten().tolist() == list(pair)
    klass = _sequence(root, "split-cifar10", "class")
    assert klass.allowed(1, seen=3).nonzero().flatten().tolist() == list(range(8))
    domain = _sequence(root, "split-cifar10", "domain")
    assert domain.num_outputs == 2 and all(t.units == (0, 1) for t in domain.tasks)
    keep = (base.y == 6) | (base.y == 7)
    assert torch.equal(domain.tasks[3].test.y, base.y[keep] - 6)
    assert domain.allowed(3) is None


@pytest.mark.parametrize(("n_tasks", "per_task"), [(5, 20), (10, 10), (20, 5)])
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_split_cifar100_classes_labels_and_units(root, scenario, n_tasks, per_task):
    base = load_dataset("cifar100", "train", root=root)
    seq = _sequence(root, "split-cifar100", scenario, n_tasks, val_fraction=0.0)
    assert len(seq) == n_tasks
    assert seq.num_outputs == (per_task if scenario == "domain" else 100)
    for i, t in enumerate(seq.tasks):
        classes = tuple(range(i * per_task, (i + 1) * per_task))
        assert t.classes == classes
        keep = torch.isin(base.y, torch.tensor(classes))
        assert torch.equal(t.train.x, base.x[keep])  # every image of the task's classes, in order
        # the label in the sequence's output space: the class itself, or its place in the task
        expected = base.y[keep] - i * per_task if scenario == "domain" else base.y[keep]
        assert torch.equal(t.train.y, expected) and t.train.num_classes == seq.num_outputs
        assert t.units == (tuple(range(per_task)) if scenario == "domain" else classes)
    last = n_tasks - 1
    if scenario == "task":
        assert seq.allowed(last).nonzero().flatten().tolist() == list(range(100 - per_task, 100))
    elif scenario == "class":
        assert seq.allowed(1).nonzero().flatten().tolist() == list(range(2 * per_task))
        assert seq.allowed(0, seen=last).all()


def test_split_cifar100_defaults_and_validation_split(root):
    seq = _sequence(root, "split-cifar100", None, seed=4)
    assert len(seq) == 10 and seq.scenario == "task" and seq.tasks[3].name == "classes 30–39"
    base = load_dataset("cifar100", "train", root=root)
    for t in seq.tasks:  # 40 training images per task: 4 held out, disjoint, together the task
        assert len(t.val) == 4 and len(t.train) == 36
        together = torch.cat([t.train.x, t.val.x]).flatten(1)
        rows = base.x[torch.isin(base.y, torch.tensor(t.classes))].flatten(1)
        assert len(together) == len(rows) == len(torch.unique(rows, dim=0))  # distinct images
        assert torch.equal(torch.unique(together, dim=0), torch.unique(rows, dim=0))
    again = _sequence(root, "split-cifar100", None, seed=4)
    other = _sequence(root, "split-cifar100", None, seed=5)
    assert torch.equal(seq.tasks[2].val.x, again.tasks[2].val.x)
    assert not torch.equal(seq.tasks[2].val.x, other.tasks[2].val.x)
    capped = _sequence(root, "split-cifar100", "class", 20, max_train=10, val_fraction=0.2)
    assert all(len(t.train) == 8 and len(t.val) == 2 for t in capped.tasks)
    assert all(len(t.test) == 10 for t in capped.tasks)  # 2 test images of each of 5 classes


def test_construction_is_generic_over_the_base(root):
    # a split of any base: split-mnist's construction on CIFAR-100, 50 tasks of 2 classes
    seq = _sequence(root, "split-mnist", "domain", 50, base="cifar100", val_fraction=0.0)
    assert len(seq) == 50 and seq.num_outputs == 2 and seq.tasks[49].classes == (98, 99)
    assert seq.tasks[49].name == "digits 98/99"  # the split-mnist spec calls its classes digits
    # permutations of any base: CIFAR-10's 3·32·32 features
    permuted = _sequence(root, "permuted-mnist", "task", 2, base="cifar10", seed=2)
    test = load_dataset("cifar10", "test", root=root)
    perm = permutations(2, 3 * 32 * 32, 2)[1]
    assert torch.equal(permuted.tasks[1].test.x.flatten(1), test.x.flatten(1)[:, perm])
    assert torch.equal(permuted.tasks[1].test.y, test.y + 10) and permuted.num_outputs == 20


def test_the_cifar_sequences_take_their_own_base_only(root):
    # None, its own name, and the CLI's default digits base (not a choice there) are accepted
    assert _sequence(root, "split-cifar10", "task", base="cifar10").base == "cifar10"
    assert _sequence(root, "split-cifar10", "task", base="mnist5k").base == "cifar10"
    with pytest.raises(WeightgeoError, match="split-cifar100 is always built from cifar100, not cifar10"):
        _sequence(root, "split-cifar100", "task", base="cifar10")
    with pytest.raises(WeightgeoError) as info:
        _sequence(root, "split-cifar100", "class", 7)
    assert str(info.value) == (
        "split-cifar100 cuts the 100 classes of cifar100 into tasks of equal size: "
        "--n-tasks must be one of 1, 2, 4, 5, 10, 20, 25, 50, got 7")


def test_missing_cifar_files_are_one_line(tmp_path):
    with pytest.raises(WeightgeoError) as info:
        make_task_sequence("split-cifar100", "class", root=tmp_path)
    assert "cifar100 not found under" in str(info.value) and "\n" not in str(info.value)


def test_continual_help_lists_the_cifar_sequences_counts_and_resnet18():
    wide = {"terminal_width": 2000, "max_content_width": 2000}  # no line breaks inside names
    text = " ".join(CliRunner().invoke(cli, ["continual", "--help"], **wide).output.split())
    assert "split-cifar10 (the classes of cifar10 in tasks of equal size)" in text
    assert "split-cifar100 (the classes of cifar100 in tasks of equal size)" in text
    assert "split-cifar100 10 (1/2/4/5/10/20/25/50)" in text and "split-mnist 5 (1/2/5)" in text
    assert "resnet18 for split-cifar10, split-cifar100" in text
    assert "Choices: mlp, fashion-cnn, vgg11, vgg16, resnet18" in text  # the --model choices


def _run_cli(tmp_path, model, n_tasks):
    """``weightgeo continual`` on split-cifar100, class-incremental, full-size network, on CPU.

    The CLI has no option for a model's width, so the network is full size and the work is
    kept small instead: one test image per class (evaluation dominates), every task stops
    after one step (``--target-accuracy 0``), batches of two images, one stored input per task.
    """
    root = write_fake_cifar(tmp_path / "data", "cifar100", n_train=200, n_test=100, seed=2)
    return CliRunner().invoke(cli, [
        "continual", "--tasks", "split-cifar100", "--scenario", "class", "--n-tasks", str(n_tasks),
        "--model", model, "--method", "finetune,geodesic", "--budget", "12", "--batch-size", "2",
        "--memory", "1", "--target-accuracy", "0", "--data-root", str(root), "--device", "cpu",
        "--out", str(tmp_path / "run"),
    ])


@pytest.mark.slow
@pytest.mark.parametrize(("model", "n_tasks"), [("vgg11", 5), ("resnet18", 2)])
def test_cli_split_cifar100_class_incremental_end_to_end(tmp_path, model, n_tasks):
    out = tmp_path / "run"
    result = _run_cli(tmp_path, model, n_tasks)
    assert result.exit_code == 0, result.output
    assert f"split-cifar100 ({n_tasks} tasks from cifar100, class-incremental, 100 output units)" in (
        result.output)
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == model and config["scenario"] == "class"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["scenario"], r["seed"]) for r in rows] == [
        ("finetune", "class", "0"), ("geodesic", "class", "0")]
    # one step per task; the geodesic method also paid for its K-FAC metric after task 1
    assert int(rows[0]["grad_evals"]) == n_tasks and int(rows[1]["grad_evals"]) > n_tasks
    assert f"model {model}" in (out / "summary.md").read_text()
    for line in (out / "results.jsonl").read_text().splitlines():
        matrix = json.loads(line)["matrix"]
        assert len(matrix) == n_tasks and all(len(row) == n_tasks for row in matrix)
        for i, row in enumerate(matrix):  # R[i][j]: known for j ≤ i, NaN above the diagonal
            assert all(0 <= a <= 1 for a in row[: i + 1])
            assert all(a is None or math.isnan(a) for a in row[i + 1:])
    for method in ("finetune", "geodesic"):
        table = list(csv.DictReader(open(out / "matrices" / f"{method}_seed0.csv")))
        assert [r["after_task"] for r in table] == [str(i + 1) for i in range(n_tasks)]
        assert list(table[0]) == ["after_task", *(f"task_{j + 1}" for j in range(n_tasks))]
        assert table[0][f"task_{n_tasks}"] == "" and table[-1][f"task_{n_tasks}"] != ""
