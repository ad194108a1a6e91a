"""Data parallelism over ``torch.distributed``: every rank shards each batch, partial means are averaged.

Under ``torchrun`` every rank holds the same θ and runs the same code (tracer, optimisation loop,
application); only the data is split. Each batch the library draws — a metric's inputs, an
objective's minibatch, a training minibatch, the reference inputs of ``fip``, an evaluation set — is
the same on every rank (the streams are seeded alike), and each rank works on its contiguous shard
of it (:func:`shard`; shard sizes differ by at most one). A mean over the batch is then the mean of
the ranks' partial means weighted by their shard sizes (:func:`average`: one ``all_reduce``), which
is the exact mean for uneven shards too. So a metric-vector product, an objective's gradient and a
training gradient come out identical on every rank, conjugate gradients take identical steps, and θ
stays identical without ever being broadcast again (:func:`check_same` asserts it).

Products do not wrap the model in ``DistributedDataParallel`` (``torch.func.jvp`` does not pass
through a DDP module, pytorch issue 102197): each rank evaluates its shard with ``torch.func`` on
its own copy of θ and the partial products are all-reduced.

Only rank 0 writes files (:func:`is_writer`); every rank reads them (so every rank resumes from
the same run directory). With one process every function here is the identity.
"""

from __future__ import annotations

import datetime
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from weightgeo.errors import WeightgeoError


def active() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def bounds(n: int, ranks: int | None = None, index: int | None = None) -> tuple[int, int]:
    """[start, stop) of shard ``index`` of ``n`` examples split into ``ranks`` contiguous parts
    whose sizes differ by at most one (the first ``n mod ranks`` parts have one more)."""
    ranks = world_size() if ranks is None else ranks
    index = rank() if index is None else index
    base, extra = divmod(n, ranks)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard(batch: Any) -> Any:
    """This rank's part of ``batch``: every tensor sliced along its first (batch) dimension;
    tuples, lists and dicts are sharded item by item; anything else is returned as it is."""
    if not active():
        return batch
    if isinstance(batch, Tensor):
        if batch.dim() == 0:
            return batch
        start, stop = bounds(batch.shape[0])
        return batch[start:stop]
    if isinstance(batch, tuple | list):
        return type(batch)(shard(item) for item in batch)
    if isinstance(batch, dict):
        return {key: shard(value) for key, value in batch.items()}
    return batch


def batch_size(batch: Any) -> int:
    """The number of examples of a (possibly nested) batch: its first tensor's first dimension."""
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, tuple | list):
        for item in batch:
            if item is not None:
                return batch_size(item)
    if isinstance(batch, dict):
        return batch_size(list(batch.values()))
    return 1


def average(tensor: Tensor, weight: float | int | Tensor) -> Tensor:
    """Σ_r w_r t_r / Σ_r w_r over the ranks (one all-reduce); ``tensor`` itself with one process.

    With ``weight`` the size of this rank's shard and ``tensor`` a mean over that shard, the result
    is the mean over the whole batch. Not differentiable: average gradients, not losses.
    """
    if not active():
        return tensor
    w = torch.as_tensor(weight, dtype=tensor.dtype, device=tensor.device)
    packed = torch.cat([(tensor.detach() * w).reshape(-1), w.reshape(1)])
    dist.all_reduce(packed)
    total = packed[-1]
    if not bool(total > 0):  # stop test: an empty batch on every rank
        raise WeightgeoError("cannot average over an empty batch")
    return (packed[:-1] / total).reshape(tensor.shape)


def total(tensor: Tensor) -> Tensor:
    """Σ_r t_r over the ranks (one all-reduce); ``tensor`` itself with one process."""
    if not active():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def check_same(tensor: Tensor, what: str = "θ") -> None:
    """Raise unless every rank holds exactly the same ``tensor`` (a consistency check)."""
    if not active():
        return
    reference = tensor.detach().clone()
    dist.broadcast(reference, src=0)
    differs = (reference != tensor.detach()).any().to(torch.int32)
    dist.all_reduce(differs)
    if bool(differs):
        raise WeightgeoError(f"{what} differs between ranks: the ranks are out of step")


def share(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable object, e.g. an error message)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def local_device(kind: str) -> torch.device:
    """The device of this rank for a device kind: ``cuda:LOCAL_RANK`` for CUDA, else the CPU."""
    if kind == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(kind)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class RankStopped(WeightgeoError):
    """The launcher stopped this rank because another one failed (torchrun sends SIGTERM)."""


def peer_failure(error: BaseException) -> str | None:
    """One line for a collective that failed because another rank died (None for other errors)."""
    if not launched():
        return None
    text = str(error).lower()
    lost = ("connection reset", "connection closed", "broken pipe", "timed out", "timeout", "nccl", "gloo")
    if isinstance(error, RuntimeError) and any(word in text for word in lost):
        return (f"rank {os.environ.get('RANK', '?')} stopped: another rank of the run failed or was stopped (its own message says "
                "why); what was written so far is kept; rerun the same command with --resume to continue")
    return None


def _stopped_by_launcher(signum, frame) -> None:
    raise RankStopped(
        f"rank {rank()} stopped: another rank of the run failed (its own message says why); what was "
        "written so far is kept; rerun the same command with --resume to continue")


@contextmanager
def process_group(device_kind: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Join the process group that ``torchrun`` set up (NCCL on GPUs, gloo on CPUs), then leave it.

    A no-op for one process. A rank whose peer died gets an error from its next collective after
    at most ``timeout_s`` seconds instead of hanging; a rank that ``torchrun`` stops (SIGTERM, after
    another rank failed) raises :class:`RankStopped`, one line on the command line.
    """
    if not launched() or dist.is_initialized():
        yield
        return
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device("cuda"))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    previous = signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if dist.is_initialized():
            dist.destroy_process_group()
