"""Batch streams: epochs visit every example once, seeds reproduce, state resumes exactly."""

from __future__ import annotations

import pytest
import torch

from weightgeo.data.core import Data
from weightgeo.data.streams import Cycle, Fixed, Minibatches, RandomSubsets, stream
from weightgeo.errors import WeightgeoError


def _data(n: int = 10) -> Data:
    return Data(torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1), torch.arange(n), n, "toy")


def test_an_epoch_visits_every_example_once_and_matches_data_batches():
    data = _data(10)
    stream_ = Minibatches(data, 4, seed=5)
    seen = torch.cat([stream_.next()[1] for _ in range(stream_.per_epoch)])
    assert sorted(seen.tolist()) == list(range(10)) and stream_.epoch == 1
    generator = torch.Generator().manual_seed(5)
    expected = torch.cat([y for _, y in data.batches(4, shuffle=True, generator=generator)])
    assert torch.equal(seen, expected)  # the same order as the data set's own epoch


def test_drop_last_and_per_epoch():
    stream_ = Minibatches(_data(10), 4, seed=0, drop_last=True)
    assert stream_.per_epoch == 2
    assert [len(stream_.next()[1]) for _ in range(4)] == [4, 4, 4, 4] and stream_.epoch == 2


def test_state_dict_resumes_mid_epoch():
    a = Minibatches(_data(9), 2, seed=1)
    for _ in range(3):
        a.next()
    state = a.state_dict()
    expected = [a.next()[1] for _ in range(7)]
    b = Minibatches(_data(9), 2, seed=99)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.next()[1]) for x in expected)


def test_random_subsets_are_distinct_and_seeded():
    x = torch.arange(20.0)
    s1, s2 = RandomSubsets(x, 5, seed=3), RandomSubsets(x, 5, seed=3)
    first = s1.next()
    assert len(set(first.tolist())) == 5 and torch.equal(first, s2.next())
    assert not torch.equal(s1.next(), first)


def test_stream_adapts_what_users_pass():
    x = torch.ones(3)
    assert stream(x).next() is x and isinstance(stream(x), Fixed)
    cycled = stream([1, 2])
    assert isinstance(cycled, Cycle) and [cycled.next() for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(WeightgeoError, match="ran out"):
        it = stream(iter([1]))
        it.next()
        it.next()
    with pytest.raises(WeightgeoError, match="no batch"):
        stream([]).next()
    with pytest.raises(WeightgeoError, match="batch_size"):
        Minibatches(_data(), 0)
