"""Task sequences: permutations, label spaces per scenario, output units, refusals."""

from __future__ import annotations

import pytest
import torch

from weightgeo.data import load_dataset
from weightgeo.data.tasks import make_task_sequence, mask_logits, permutations
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


@pytest.mark.parametrize(
    ("name", "scenario", "n", "message"),
    [
        ("rotated-mnist", "domain", 5, "unknown task sequence 'rotated-mnist'"),
        ("permuted-mnist", "domain", 0, "--n-tasks must be at least 1, got 0"),
        ("mnist-fashion", "domain", 2, "mnist-fashion cannot be domain-incremental"),
        ("split-mnist", "task", 6, "split-mnist has at most 5 tasks"),
        ("split-mnist", "sideways", 5, "unknown scenario 'sideways'"),
    ],
)
def test_refusals_are_one_line(name, scenario, n, message):
    with pytest.raises(WeightgeoError) as err:
        make_task_sequence(name, scenario, n)
    assert message in str(err.value) and "\n" not in str(err.value)
