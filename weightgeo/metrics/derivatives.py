"""One clear error when an operation of the network lacks a derivative that a transform needs.

Metric products differentiate the network more than training does: the dual-number product
and the geodesic force need forward-mode derivatives (jvp), the linearisation of a pull-back
metric needs second derivatives (the vjp of a vjp), and the diagonal Fisher needs vmap over
per-example gradients. PyTorch reports a missing one in its own words from deep inside the
transform; :func:`explain_missing_derivatives` turns those reports into one
:class:`~weightgeo.errors.WeightgeoError` that names the operation (an ``aten::`` operator or
the user's ``autograd.Function``), where the network calls it, and the way out.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor
from torch._C._functorch import is_functorch_wrapped_tensor

from weightgeo.errors import WeightgeoError

FORWARD_MODE = "forward-mode derivatives (jvp)"
SECOND_ORDER = "second derivatives (a differentiable backward)"

# (pattern of PyTorch's message, which derivative is missing, what to give the operation)
_REPORTS: tuple[tuple[re.Pattern, str, str], ...] = (
    (re.compile(r"Trying to use forward AD with (\S+) that does not support it"), FORWARD_MODE,
     "a forward-mode formula"),
    (re.compile(r"must implement the jvp function for custom autograd\.Function"), FORWARD_MODE,
     "a jvp staticmethod"),
    (re.compile(r"derivative for (aten::\S+) is not implemented"), SECOND_ORDER,
     "a differentiable backward"),
    (re.compile(r"the derivative for '(\S+)' is not implemented"), SECOND_ORDER,
     "a differentiable backward"),
    (re.compile(r"differentiate twice a function that was marked with @once_differentiable"),
     SECOND_ORDER, "a backward without @once_differentiable"),
    (re.compile(r"must override the setup_context staticmethod"), "torch.func support",
     "a setup_context staticmethod (torch.func's form of autograd.Function)"),
    (re.compile(r"You tried to vmap over (\S+), but it does not have vmap support"), "vmap support",
     "a vmap staticmethod or generate_vmap_rule=True"),
)

_LIBRARY_ROOTS = tuple(str(Path(m.__file__).parent) for m in (torch,)) + (
    str(Path(__file__).parents[1]),
)


def _custom_function(error: BaseException) -> str | None:
    """The ``autograd.Function`` subclass being applied where ``error`` was raised, if any."""
    tb = error.__traceback__
    name = None
    while tb is not None:  # the innermost frame applying a Function (autograd's or torch.func's)
        for key in ("cls", "autograd_function"):
            cls = tb.tb_frame.f_locals.get(key)
            if isinstance(cls, type) and issubclass(cls, torch.autograd.Function):
                name = f"{cls.__module__}.{cls.__qualname__}"
        tb = tb.tb_next
    return name


def _caller(error: BaseException) -> str | None:
    """The innermost frame of ``error`` outside torch and weightgeo (the network's own code),
    with its line of source."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_LIBRARY_ROOTS)]
    if not frames:
        return None
    frame = frames[-1]
    line = (frame.line or "").strip()
    code = f": {line[:77] + '...' if len(line) > 80 else line}" if line else ""
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}{code}"


def missing_derivative(error: BaseException, what: str, way_out: str) -> WeightgeoError | None:
    """The WeightgeoError explaining ``error``, or None if it is not a missing derivative.

    Args:
        error: what PyTorch raised inside the transform.
        what: who needs the derivative, with the verb ("OutputMetric's products need").
        way_out: what the user can do instead (another metric, another tracer).
    """
    message = str(error)
    for pattern, derivative, remedy in _REPORTS:
        found = pattern.search(message)
        if found is None:
            continue
        op = (found.group(1) if found.groups() else None) or _custom_function(error)
        op = op or "a custom autograd.Function"
        if not op.startswith(("aten::", "a custom")) and "." not in op:
            op = f"aten::{op}"
        where = _caller(error)
        at = f" (called at {where})" if where else ""
        return WeightgeoError(
            f"{what} {derivative} of every operation in the network, and {op}{at} has none: "
            f"{way_out}, or give the operation {remedy}")
    return None


@contextmanager
def explain_missing_derivatives(what: str, way_out: str) -> Iterator[None]:
    """Re-raise a missing-derivative error from the block as one WeightgeoError (others pass)."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as error:
        explained = missing_derivative(error, what, way_out)
        if explained is None:
            raise
        raise explained from error


def lacks_forward_mode(error: BaseException) -> bool:
    """Whether ``error`` says that an operation has no forward-mode derivative."""
    return any(pattern.search(str(error)) and derivative == FORWARD_MODE
               for pattern, derivative, _ in _REPORTS)


def differentiated(t: Tensor) -> bool:
    """Whether a computation with ``t`` is being differentiated (autograd or a torch.func
    transform): products then keep θ in the graph instead of detaching it."""
    return (torch.is_grad_enabled() and t.requires_grad) or is_functorch_wrapped_tensor(t)
