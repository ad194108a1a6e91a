"""The tracer driver: one loop for every tracer that builds a :class:`~weightgeo.paths.Path`.

A tracer is its step rule (:class:`StepRule`): at the current point it *observes* its goal (the
objective's value and gradient, whether it is reached, what it cost) and *proposes* the next
point (and what it cost). Everything else is the driver's, the same for every tracer:

- the budget of gradient evaluations (a step is taken only if ``rule.step_cost()`` still fits);
- the stop tests, in this order after recording a point: a non-finite value or gradient, the goal
  reached, the most steps, the budget; after a proposal: a non-finite candidate, which is never
  accepted — the path ends at the last finite point with the cause recorded;
- a progress bar, an evaluation every ``evaluate_every`` points and at the end, a callback;
- writing the path, and saving the rule's state beside each saved waypoint so an interrupted
  trace resumes from its last waypoint to the same numbers (:meth:`StepRule.state_dict`).

``traverse`` (the papers' damped natural-gradient step), ``fip`` (the authors' penalty
optimiser) and ``shoot`` (the geodesic equation) are step rules driven here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.paths.path import Path
from weightgeo.progress import Progress
from weightgeo.stopping import Budget, Stop, StopReason, first_non_finite


@dataclass
class Observation:
    """The goal seen at the current point: its value, gradient (for the finite test) and cost."""

    value: Tensor
    cost: int = 0
    gradient: Tensor | None = None
    done: bool = False
    record: dict = field(default_factory=dict)


@dataclass
class Proposal:
    """The next point, what proposing it cost, and what to record with it (segment lengths …).

    ``gradient`` (optional) is the direction the step was built from; the driver tests it with
    the point, so a non-finite stop can name its cause.
    """

    point: Tensor
    cost: int = 0
    record: dict = field(default_factory=dict)
    gradient: Tensor | None = None


class StepRule(ABC):
    """How a tracer moves; the :func:`drive` loop does the rest.

    Subclasses set ``name`` and ``meta`` (recorded in the path) and implement :meth:`observe` and
    :meth:`propose`. :meth:`step_cost` bounds what the next step (a proposal plus the observation
    at the new point) may spend, for the budget test. A rule with internal state (a velocity,
    an optimiser, a random stream) returns it from :meth:`state_dict` so a run can resume.
    """

    name: str = "tracer"

    @property
    def meta(self) -> dict:
        return {"tracer": self.name}

    @abstractmethod
    def observe(self, point: Tensor) -> Observation:
        """The goal at ``point``."""

    @abstractmethod
    def propose(self, point: Tensor, observation: Observation) -> Proposal:
        """The next point from ``point``."""

    def done(self, point: Tensor, observation: Observation) -> bool:
        """Whether the goal is reached at ``point`` (a stop test; may read from the device)."""
        return False

    def step_cost(self) -> int:
        return 0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (nothing by default)."""
        return None


class ObjectiveRule(StepRule):
    """A step rule moving toward an :class:`~weightgeo.objectives.Objective` O: it observes O's
    value and gradient at the point (O's cost), stops when O is done, and saves O's state (its
    batch stream, a re-ranked mask …) with its own. Subclasses set ``self.objective`` and write
    :meth:`propose`; :meth:`own_state`/:meth:`load_own_state` carry their own state."""

    objective: Any

    def observe(self, point: Tensor) -> Observation:
        value, grad = self.objective.value_and_grad(point)
        return Observation(value, self.objective.cost, grad)

    def done(self, point: Tensor, observation: Observation) -> bool:
        return self.objective.done(point)

    def own_state(self) -> dict:
        return {}

    def load_own_state(self, state: dict) -> None:
        return None

    def state_dict(self) -> dict:
        state = {"own": self.own_state()}
        if hasattr(self.objective, "state_dict"):
            state["objective"] = self.objective.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.load_own_state(state.get("own", {}))
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])


def drive(
    rule: StepRule,
    path: Path,
    *,
    max_steps: int,
    budget: Budget | None = None,
    first_record: dict | None = None,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    evaluate_every: int = 10,
    callback: Callable[[int, Tensor, Path], bool | None] | None = None,
    progress: bool = False,
) -> Stop:
    """Run ``rule`` from the end of ``path`` and append every accepted point to it.

    Args:
        rule: the tracer's step rule.
        path: an open path; its end is the starting point. ``first_record`` (the record of that
            point, e.g. zero lengths) is given for a new path; None continues a path whose end is
            already recorded.
        max_steps: the most steps to take (in this call).
        budget: the count of gradient evaluations (default: the path's so far, no limit).
        evaluate: ``θ -> dict`` of measurements recorded every ``evaluate_every`` points and at
            the end (logging: it may read from the device).
        callback: ``callback(k, θ_k, path)`` after each recorded point; True stops.
        progress: show a progress bar.

    Returns:
        The :class:`Stop`: the reason, the step and, for a non-finite stop, the cause.
    """
    budget = Budget(None, path.grad_evals) if budget is None else budget
    point = path.end
    record = first_record
    steps = 0
    evaluated_last = True
    stop: Stop | None = None
    with Progress(max_steps, rule.name, enabled=progress) as bar:
        while stop is None:
            saving = record is not None and path.will_save(len(path))
            before = {"rule": rule.state_dict(), "spent": budget.spent} if saving else None
            observation = rule.observe(point)
            budget.charge(observation.cost)
            if record is not None:
                k = path.append(point, state=before, objective=observation.value, grad_evals=budget.spent,
                                **record, **observation.record)
                evaluated_last = k % evaluate_every == 0
                if evaluate is not None and evaluated_last:
                    path.update_last(**evaluate(point))
                if callback is not None and callback(k, point, path):
                    stop = Stop(StopReason.CALLBACK, steps)
                    break
            # Stop tests: each reads one value from the device.
            cause = first_non_finite(objective=observation.value, gradient=observation.gradient)
            if cause is not None:
                stop = Stop(StopReason.NON_FINITE, steps, cause)
            elif rule.done(point, observation):
                stop = Stop(StopReason.DONE, steps)
            elif steps >= max_steps:
                stop = Stop(StopReason.STEPS, steps)
            elif not budget.affords(rule.step_cost()):
                stop = Stop(StopReason.BUDGET, steps)
            if stop is not None:
                break
            proposal = rule.propose(point, observation)
            budget.charge(proposal.cost)
            cause = first_non_finite(gradient=proposal.gradient, step=proposal.point)
            if cause is not None:  # never accepted: the path ends at the last finite point
                stop = Stop(StopReason.NON_FINITE, steps + 1, cause)
                break
            point, record = proposal.point, proposal.record
            steps += 1
            bar.update(1)
    if evaluate is not None and not evaluated_last:
        path.update_last(**evaluate(path.end))
    return stop


def run_tracer(
    rule: StepRule,
    path: Path,
    *,
    max_steps: int,
    budget: int | None = None,
    finish: bool = True,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    evaluate_every: int = 10,
    callback: Callable[[int, Tensor, Path], bool | None] | None = None,
    progress: bool = False,
) -> Path:
    """Drive ``rule`` on ``path`` (new, resumed or continued) and finish it unless ``finish=False``.

    A new path gets its first point recorded; a path resumed from disk gets the rule's saved
    state back (so it continues to the same numbers); ``budget`` counts the path's evaluations
    so far. With ``finish=False`` the path stays open, the stop is kept in ``path.last_stop`` and
    ends the current stage, if one is open.

    Raises:
        WeightgeoError: ``max_steps`` is negative, or ``path`` is finished.
    """
    if not isinstance(max_steps, int) or max_steps < 0:
        raise WeightgeoError(f"max_steps must be a whole number ≥ 0, got {max_steps!r}")
    if path.finished:
        raise WeightgeoError("the path is finished: continue an open path (Path.resume reopens an interrupted one)")
    first = {"metric_length": 0.0, "euclidean_length": 0.0} if len(path) == 0 else None
    if first is not None:
        path.meta = {**rule.meta, **path.meta}
    spent = path.grad_evals
    if first is None:
        saved = path.load_state()
        if saved is not None:
            rule.load_state_dict(saved["rule"])
            spent = int(saved["spent"])
    offset = max(0, len(path) - 1)  # steps already on the path: a stop's step counts on from them
    stop = drive(rule, path, max_steps=max_steps, budget=Budget(budget, spent), first_record=first,
                 evaluate=evaluate, evaluate_every=evaluate_every, callback=callback, progress=progress)
    stop = Stop(stop.reason, stop.step + offset, stop.cause)
    path.last_stop = stop
    if finish:
        return path.finish(stop)
    if path.stage_open:
        path.end_stage(stop)
    return path
