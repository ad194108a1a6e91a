"""Task sequences: permutations, label spaces per scenario, output units, defaults, refusals."""

from __future__ import annotations

import hashlib

import pytest
import torch

from weightgeo.applications.continual import ContinualSettings
from weightgeo.cli import main
from weightgeo.data import SEQUENCES, load_dataset
from weightgeo.data.tasks import (
    check_task_options,
    make_task_sequence,
    mask_logits,
    n_tasks_help,
    permutations,
    split_counts,
)
from weightgeo.data.testing import write_fake_mnist
from weightgeo.errors import WeightgeoError


def test_permutations_same_for_same_seed_and_differ_across_seeds():
    a, b, c = permutations(4, 784, 0), permutations(4, 784, 0), permutations(4, 784, 1)
    assert torch.equal(a[0], torch.arange(784)) and torch.equal(c[0], torch.arange(784))
    for p, q, r in zip(a[1:], b[1:], c[1:]):
        assert torch.equal(p, q)
        assert not torch.equal(p, r)
        assert torch.equal(p.sort().values, torch.arange(784))  # a permutation
    assert not torch.equal(a[1], a[2])


def test_permuted_tasks_permute_the_base_inputs():
    seq = make_task_sequence("permuted-mnist", "domain", 3, seed=5, val_fraction=0.0)
    base = load_dataset("mnist5k", "test")
    perms = permutations(3, 784, 5)
    assert seq.num_outputs == 10 and len(seq) == 3
    assert torch.equal(seq.tasks[0].test.x, base.x)
    flat = base.x.reshape(len(base), -1)[:, perms[2]]
    assert torch.equal(seq.tasks[2].test.x.reshape(len(base), -1), flat)
    assert torch.equal(seq.tasks[2].test.y, base.y)
    assert seq.allowed(1) is None
    # task- and class-incremental heads: 10 units per task
    seq_t = make_task_sequence("permuted-mnist", "task", 3, seed=5)
    assert seq_t.num_outputs == 30
    assert torch.equal(seq_t.tasks[1].test.y, base.y + 10)
    assert seq_t.allowed(1).nonzero().flatten().tolist() == list(range(10, 20))
    seq_c = make_task_sequence("permuted-mnist", "class", 3, seed=5)
    assert seq_c.allowed(0, seen=1).nonzero().flatten().tolist() == list(range(20))


def test_split_mnist_labels_and_units_per_scenario():
    task = make_task_sequence("split-mnist", "task", seed=0)
    assert len(task) == 5
    for i, t in enumerate(task.tasks):
        assert set(t.train.y.unique().tolist()) == {2 * i, 2 * i + 1}
        assert set(t.test.y.unique().tolist()) == {2 * i, 2 * i + 1}
        assert task.allowed(i).nonzero().flatten().tolist() == [2 * i, 2 * i + 1]
    assert task.allowed(3, seen=4).nonzero().flatten().tolist() == [6, 7]
    klass = make_task_sequence("split-mnist", "class", seed=0)
    assert klass.allowed(2).nonzero().flatten().tolist() == list(range(6))
    domain = make_task_sequence("split-mnist", "domain", seed=0)
    assert domain.num_outputs == 2
    assert set(domain.tasks[3].test.y.unique().tolist()) == {0, 1}
    # the validation split is held out of training, the same for the same seed
    again = make_task_sequence("split-mnist", "task", seed=0)
    assert torch.equal(task.tasks[1].val.x, again.tasks[1].val.x)
    assert len(task.tasks[1].val) + len(task.tasks[1].train) == int((load_dataset("mnist5k").y <= 3).sum() -
                                                                     (load_dataset("mnist5k").y <= 1).sum())


def test_mask_logits_keeps_allowed_units():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    masked = mask_logits(logits, torch.tensor([False, True, True]))
    assert masked.argmax(-1).tolist() == [2, 1]
    rows = mask_logits(logits, torch.tensor([[True, False, False], [False, False, True]]))
    assert rows.argmax(-1).tolist() == [0, 2]


def test_mnist_fashion_shifts_fashion_labels(tmp_path):
    write_fake_mnist(tmp_path, "mnist", n_train=60, n_test=30, seed=0)
    write_fake_mnist(tmp_path, "fashion-mnist", n_train=60, n_test=30, seed=1)
    seq = make_task_sequence("mnist-fashion", "task", base="mnist", root=tmp_path)
    assert seq.num_outputs == 20 and len(seq) == 2
    assert seq.tasks[0].test.y.max() <= 9
    assert seq.tasks[1].test.y.min() >= 10 and seq.tasks[1].test.y.max() <= 19
    assert seq.allowed(1).nonzero().flatten().tolist() == list(range(10, 20))


def test_split_mnist_in_two_tasks_of_five_digits():
    domain = make_task_sequence("split-mnist", "domain", 2, seed=0, val_fraction=0.0)
    base = load_dataset("mnist5k", "test")
    assert domain.num_outputs == 5 and [t.classes for t in domain.tasks] == [(0, 1, 2, 3, 4),
                                                                              (5, 6, 7, 8, 9)]
    second = domain.tasks[1].test
    assert torch.equal(second.x, base.x[base.y >= 5]) and torch.equal(second.y, base.y[base.y >= 5] - 5)
    assert [t.name for t in domain.tasks] == ["digits 0–4", "digits 5–9"]
    task = make_task_sequence("split-mnist", "task", 2, seed=0)
    assert task.num_outputs == 10 and task.allowed(1).nonzero().flatten().tolist() == [5, 6, 7, 8, 9]


def test_max_train_caps_every_task_not_the_base():
    seq = make_task_sequence("split-mnist", "class", seed=3, max_train=50)
    for i, t in enumerate(seq.tasks):
        assert len(t.train) + len(t.val) == 50 and len(t.val) == 5
        assert set(torch.cat([t.train.y, t.val.y]).tolist()) == {2 * i, 2 * i + 1}


def _digest(seq) -> str:
    h = hashlib.sha256()
    for t in seq.tasks:
        for d in (t.train, t.val, t.test):
            h.update(d.x.numpy().tobytes())
            h.update(d.y.numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize(
    ("name", "scenario", "n", "seed", "digest"),
    [
        ("split-mnist", "task", None, 0, "82e2406c1c2e359d"),
        ("split-mnist", "class", None, 1, "c4276cfba3590519"),
        ("split-mnist", "domain", None, 0, "246a1def19fa0231"),
        ("permuted-mnist", "domain", None, 0, "c69977740c389e3e"),
        ("permuted-mnist", "domain", None, 1, "506c2e6d73ff39a7"),
        ("permuted-mnist", "task", 3, 1, "9334864254df53c2"),
    ],
)
def test_mnist_sequences_keep_their_numbers(name, scenario, n, seed, digest):
    # Every tensor of the sequence, as built before task construction became generic over
    # the base: benchmarks and earlier results depend on these numbers.
    assert _digest(make_task_sequence(name, scenario, n, seed=seed)) == digest


def test_defaults_live_with_the_sequences():
    assert {n: (s.scenario, s.model, s.n_tasks) for n, s in SEQUENCES.items()} == {
        "permuted-mnist": ("domain", "mlp", 5),
        "split-mnist": ("task", "mlp", 5),
        "mnist-fashion": ("task", "fashion-cnn", 2),
        "split-cifar10": ("task", "resnet18", 5),
        "split-cifar100": ("task", "resnet18", 10),
    }
    # the continual settings read them from there
    assert ContinualSettings(tasks="permuted-mnist").scenario_or_default == "domain"
    assert ContinualSettings(tasks="split-cifar100").scenario_or_default == "task"
    assert ContinualSettings(tasks="mnist-fashion").model_or_default == "fashion-cnn"
    assert ContinualSettings(tasks="split-cifar10").model_or_default == "resnet18"
    with pytest.raises(WeightgeoError, match="unknown value 'rotated-mnist'"):
        ContinualSettings(tasks="rotated-mnist")
    assert make_task_sequence("split-mnist").scenario == "task"
    assert len(make_task_sequence("permuted-mnist", val_fraction=0.0)) == 5


def test_split_counts_are_the_divisors_with_two_classes_or_more():
    assert split_counts(10) == (1, 2, 5)
    assert split_counts(100) == (1, 2, 4, 5, 10, 20, 25, 50)
    assert check_task_options("split-mnist", "task", None) == 5
    assert check_task_options("split-cifar100", "class", None) == 10
    assert check_task_options("split-cifar100", "class", 20) == 20
    assert check_task_options("split-mnist", "task", 10, base="cifar100") == 10
    assert check_task_options("permuted-mnist", "domain", 12) == 12
    help_text = n_tasks_help()
    assert "split-cifar100 10 (1/2/4/5/10/20/25/50)" in help_text and "permuted-mnist 5 (any)" in help_text


@pytest.mark.parametrize(
    ("name", "scenario", "n", "base", "message"),
    [
        ("rotated-mnist", "domain", 5, None,
         "unknown task sequence 'rotated-mnist'; choose one of permuted-mnist, split-mnist, "
         "mnist-fashion, split-cifar10, split-cifar100"),
        ("permuted-mnist", "domain", 0, None, "--n-tasks must be at least 1, got 0"),
        ("mnist-fashion", "domain", 2, None, "mnist-fashion cannot be domain-incremental"),
        ("mnist-fashion", "task", 3, None,
         "mnist-fashion has at most 2 tasks: --n-tasks must be one of 1, 2, got 3"),
        ("split-mnist", "task", 6, None, "split-mnist cuts the 10 classes of mnist5k into tasks of "
         "equal size: --n-tasks must be one of 1, 2, 5, got 6"),
        ("split-mnist", "task", 3, None, "--n-tasks must be one of 1, 2, 5, got 3"),
        ("split-mnist", "task", 10, None, "--n-tasks must be one of 1, 2, 5, got 10"),
        ("split-mnist", "sideways", 5, None, "unknown scenario 'sideways'; choose one of task, domain, class"),
        ("split-mnist", "task", 5, "svhn", "unknown data set 'svhn'; choose one of mnist5k, mnist"),
        ("split-cifar10", "task", 5, "mnist", "split-cifar10 is always built from cifar10, not mnist; "
         "--base chooses the base of permuted-mnist, split-mnist, mnist-fashion"),
        ("split-cifar100", "class", 3, None, "split-cifar100 cuts the 100 classes of cifar100 into tasks "
         "of equal size: --n-tasks must be one of 1, 2, 4, 5, 10, 20, 25, 50, got 3"),
        ("split-cifar10", "class", 10, None, "--n-tasks must be one of 1, 2, 5, got 10"),
    ],
)
def test_refusals_are_one_line(name, scenario, n, base, message):
    # refused before any data set is read (the CIFAR files are not there)
    with pytest.raises(WeightgeoError) as err:
        make_task_sequence(name, scenario, n, base, root="/nonexistent")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_continual_cli_refuses_a_model_that_does_not_fit_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["continual", "--tasks", "split-mnist", "--model", "vgg11", "--method", "finetune",
              "--budget", "2", "--max-train", "20", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    # stderr: the error in one line, before anything is logged or written
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and not (tmp_path / "run").exists()
    assert error.startswith("Error: model vgg11 does not fit split-mnist on mnist5k "
                            "(inputs 1×28×28, 10 classes)")
    assert error.endswith("models that fit: mlp, fashion-cnn, resnet18, small-cnn")
