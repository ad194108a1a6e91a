"""``connect``: join two trained networks by every requested method and compare the paths.

Writes to the run directory: ``config.json``; ``results.csv`` and ``results.md`` (one row per
method); ``evaluation.csv`` (every method's loss and accuracy at each evaluated point);
``along_paths.png`` (test accuracy and loss along every path on shared axes); ``plane.png``
(test-loss contours on the plane through θ_a, θ_b and a path's midpoint, every path drawn);
``paths/<method>/`` (the traced paths, or the curve's control points as a Path).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from weightgeo.applications.connect.evaluate import (
    PointEvaluator,
    evaluate_points,
    path_metric_length,
    summarise,
)
from weightgeo.applications.connect.methods import (
    METHODS,
    TRAINED,
    MethodResult,
    Setting,
    run_method,
)
from weightgeo.applications.connect.rebasin import mlp_layers
from weightgeo.applications.connect.report import along_paths_plot, plane_basis, plane_plot
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models.checkpoint import Checkpoint, checkpoints_compatible, load_checkpoint
from weightgeo.paths import Path as WeightPath
from weightgeo.rundir import markdown_table, prepare_run_dir, write_csv, write_json, write_text
from weightgeo.workflows import load_with_data

RESULT_COLUMNS = [
    "method", "min_test_accuracy", "max_accuracy_drop", "loss_barrier", "error_barrier",
    "euclidean_length", "metric_length", "grad_evals", "seconds",
]


def connect_networks(
    model: FunctionalModel,
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    train,
    test,
    out: str | os.PathLike | None = None,
    *,
    methods: Sequence[str] = METHODS,
    points: int = 61,
    recompute_bn: bool = True,
    plane_grid: int = 21,
    with_train: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda msg: None,
    model_name: str | None = None,
    **settings,
) -> dict:
    """Connect θ_a and θ_b by each method, evaluate every path, write the report to ``out``.

    ``settings`` are the fields of :class:`~weightgeo.applications.connect.methods.Setting`
    (metric, nodes, budget, batch_size, metric_batch, task_weight, relax_lr, step_size,
    damping, cg_iters, tol, curve_lr, weight_decay, seed, progress). Returns
    ``{"rows": [...], "evaluations": {method: rows}, "results": {method: MethodResult}}``.
    """
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise WeightgeoError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if points < 3:
        raise WeightgeoError(f"evaluate at least 3 points along each path, got {points}")
    if "rebasin" in methods:
        mlp_layers(model, model_name)  # refuse unsupported architectures before any work
    run = None if out is None else prepare_run_dir(out, overwrite)
    seed = settings.get("seed", 0)
    generator = torch.Generator(device="cpu").manual_seed(seed + 7)
    metric_batch = settings.get("metric_batch", 256)
    idx = torch.randperm(len(train.x), generator=generator)[:metric_batch]
    metric_inputs = train.x[idx].to(theta_a.device)
    setting = Setting(model, theta_a, theta_b, train, test, log=log,
                      paths_dir=None if run is None else run / "paths", metric_inputs=metric_inputs,
                      **settings)
    if run is not None:
        write_json(run / "config.json", {"command": "connect", "methods": methods, "points": points,
                                         "recompute_bn": recompute_bn, "plane_grid": plane_grid,
                                         **{k: v for k, v in settings.items() if k != "progress"}})
    evaluator = PointEvaluator(model, train, test, recompute_bn=recompute_bn, with_train=with_train)
    space = setting.space()
    results: dict[str, MethodResult] = {}
    evaluations: dict[str, list[dict]] = {}
    sampled: dict[str, torch.Tensor] = {}
    rows: list[dict] = []
    for name in methods:
        log(f"connect: {name}")
        result = run_method(name, setting)
        pts, fractions = result.curve.sample(points)
        evaluation = evaluate_points(pts, fractions, evaluator)
        row = {"method": name, **summarise(evaluation),
               "euclidean_length": result.curve.euclidean_length(),
               "metric_length": path_metric_length(space, pts, metric_inputs),
               "grad_evals": result.grad_evals, "seconds": result.seconds, **result.info}
        rows.append(row)
        results[name], evaluations[name], sampled[name] = result, evaluation, pts
        if run is not None:
            _save_curve(run / "paths" / name, result)
            write_csv(run / "evaluation.csv",
                      [{"method": m, **r} for m, ev in evaluations.items() for r in ev])
            write_csv(run / "results.csv", rows, RESULT_COLUMNS)
        log(f"connect: {name}: worst test accuracy {row['min_test_accuracy']:.2f}%, "
            f"loss barrier {row['loss_barrier']:.4f}, {result.grad_evals} grad evals, "
            f"{result.seconds:.1f} s")
    if run is not None:
        _write_report(run, rows, evaluations, sampled, theta_a, theta_b, evaluator, plane_grid,
                      setting)
    return {"rows": rows, "evaluations": evaluations, "results": results}


def _save_curve(directory: Path, result: MethodResult) -> None:
    if result.path is not None and result.path.directory is not None:
        return  # streamed there by its tracer
    if directory.exists():
        shutil.rmtree(directory)  # an earlier run's path (with --overwrite): paths append
    path = WeightPath(result.curve.start, directory=directory, save_every=1,
                      meta={"method": result.name, "curve": result.curve.kind, **result.info})
    for k, theta in enumerate(result.curve.control_points()):
        path.append(theta, grad_evals=result.grad_evals if k else 0)
    path.finish("done")


def _write_report(run, rows, evaluations, sampled, theta_a, theta_b, evaluator, plane_grid, setting):
    write_csv(run / "results.csv", rows, RESULT_COLUMNS)
    budget_note = ", ".join(f"{r['method']} {r['grad_evals']}" for r in rows if r["method"] in TRAINED)
    text = (
        "# Connecting two networks\n\n"
        f"Metric: {setting.metric}; nodes (relax): {setting.nodes}; budget: {setting.budget} gradient "
        f"evaluations per trained method (spent: {budget_note or 'none trained'}).\n"
        "Accuracies in %, drops and error barrier in points; loss barrier = max test loss − mean of "
        "the endpoints' test losses; metric length on a fixed batch of training inputs.\n\n"
        + markdown_table(rows, RESULT_COLUMNS)
        + "\n![along the paths](along_paths.png)\n"
    )
    along_paths_plot(run / "along_paths.png", evaluations)
    if plane_grid >= 2:
        name = next((m for m in ("relax", "traverse", "bezier", "polychain") if m in sampled), None)
        pts = sampled[name] if name else sampled[next(iter(sampled))]
        mid = pts[len(pts) // 2]
        u, v, d, h = plane_basis(theta_a, theta_b, mid)
        projected = {m: p for m, p in sampled.items()}
        ys_all = [float((p - theta_a) @ v) for pp in projected.values() for p in pp]
        xs_all = [float((p - theta_a) @ u) for pp in projected.values() for p in pp]
        lo_x, hi_x = min(xs_all + [0.0]), max(xs_all + [d])
        lo_y, hi_y = min(ys_all + [0.0]), max(ys_all + [h])
        pad_x, pad_y = 0.2 * (hi_x - lo_x), 0.2 * max(hi_y - lo_y, 0.1 * d)
        gx = torch.linspace(lo_x - pad_x, hi_x + pad_x, plane_grid).tolist()
        gy = torch.linspace(lo_y - pad_y, hi_y + pad_y, plane_grid).tolist()
        losses = []
        for yv in gy:
            row = []
            for xv in gx:
                theta = theta_a + xv * u + yv * v
                buffers = evaluator.buffers(theta)
                row.append(evaluator._scores(theta, evaluator.test, buffers)[0])
            losses.append(row)
        plane_plot(run / "plane.png", theta_a, u, v, gx, gy, losses, projected,
                   f"Test loss on the plane through θ_a, θ_b and the {name or 'path'} midpoint")
        write_json(run / "plane.json", {"x": gx, "y": gy, "test_loss": losses, "midpoint_of": name})
        text += "\n![the plane through θ_a, θ_b and the midpoint](plane.png)\n"
    write_text(run / "results.md", text)


def connect(
    checkpoint_a: str | os.PathLike | Checkpoint,
    checkpoint_b: str | os.PathLike | Checkpoint,
    out: str | os.PathLike | None,
    *,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    device: str | torch.device = "auto",
    **options,
) -> dict:
    """Load two checkpoints of one architecture and their data, then :func:`connect_networks`."""
    a = checkpoint_a if isinstance(checkpoint_a, Checkpoint) else load_checkpoint(checkpoint_a)
    b = checkpoint_b if isinstance(checkpoint_b, Checkpoint) else load_checkpoint(checkpoint_b)
    checkpoints_compatible(a, b)
    loaded = load_with_data(a, dataset, data_root, download, device)
    theta_b = loaded.fmodel.flatten(b.model.to(loaded.device))
    started = time.perf_counter()
    result = connect_networks(loaded.fmodel, loaded.theta, theta_b, loaded.train, loaded.test, out,
                              model_name=a.name, **options)
    result["seconds"] = time.perf_counter() - started
    return result
