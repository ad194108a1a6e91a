"""The demo's mode-connectivity section: join the two demo MLPs and compare with the straight line."""

from __future__ import annotations

import time

from weightgeo.applications.connect.run import connect_networks
from weightgeo.functional import FunctionalModel
from weightgeo.rundir import markdown_table


def section_connect(ctx) -> str:
    """linear, rebasin and relax between MLP a and MLP b (about a minute on 2 cores; less if quick)."""
    a, b = ctx.models["a"], ctx.models["b"]
    fmodel = FunctionalModel(a["model"])
    ctx.log("connecting MLP a and MLP b (linear, rebasin, relax)")
    started = time.perf_counter()
    result = connect_networks(
        fmodel, a["theta"], b["theta"], ctx.train, ctx.test, ctx.out / "connect", overwrite=True,
        method=("linear", "rebasin", "relax"), points=11 if ctx.quick else 31,
        plane_grid=0 if ctx.quick else 11, train_eval=False,
        budget=100 if ctx.quick else 1500, nodes=4 if ctx.quick else 8, seed=ctx.seed,
    )
    seconds = time.perf_counter() - started
    columns = ["method", "min_test_accuracy", "max_accuracy_drop", "loss_barrier", "euclidean_length",
               "grad_evals", "seconds"]
    picture = "" if ctx.quick else "\n![the loss plane](connect/plane.png)\n"
    return (
        "## Connecting the two networks\n\n"
        "Paths from MLP a to MLP b: the straight line, the straight line after permutation "
        "alignment (weight matching), and `relax` (8 nodes whose outputs are fitted to the "
        "output metric's geodesic, the straight segment of the two networks' logits, plus the task "
        "loss at the nodes). Test accuracy in %, evaluated at points evenly "
        f"spaced by arc length ({seconds:.0f} s in all; `weightgeo connect` runs every method).\n\n"
        + markdown_table(result.rows, columns)
        + "\n![accuracy and loss along the paths](connect/along_paths.png)\n" + picture
    )
