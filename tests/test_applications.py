"""The application shape: units recorded as they finish, resume skips them, overwrite cleans,
diverged methods exit with status 3; a new application from an Objective runs from Python and the CLI."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from weightgeo.applications import Application, Unit, run, run_application
from weightgeo.cli import main
from weightgeo.registry import Registry
from weightgeo.rundir import write_text
from weightgeo.settings import Settings, setting

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "unlearn.py"
STEPS = Registry("method")
STEPS.register("ok", lambda: {"stop_reason": "max-steps"})
STEPS.register("nan", lambda: {"stop_reason": "non-finite", "stop_message": "nan stopped at step 3: non-finite loss"})


@dataclass
class ToySettings(Settings):
    methods: tuple[str, ...] = setting(("ok",), "methods", choices=STEPS)
    fail_on: str = setting("", "raise in this unit (a simulated crash)")


class Toy(Application):
    """A toy application: one row per method."""

    name = "toy"
    Settings = ToySettings
    methods = STEPS
    calls: list[str] = []

    def units(self):
        return [Unit(m) for m in self.settings.methods]

    def run_unit(self, unit, run):
        Toy.calls.append(unit.key)
        if unit.key == self.settings.fail_on:
            raise KeyboardInterrupt
        return [{"method": unit.key, **self.methods[unit.key]()}]

    def report(self, rows, run):
        return write_text(run / "summary.md", json.dumps(rows))


def test_units_are_recorded_and_a_resumed_run_skips_them(tmp_path):
    Toy.calls = []
    settings = ToySettings(methods=("ok", "nan"), fail_on="nan")
    with pytest.raises(KeyboardInterrupt):
        run_application(Toy(settings), tmp_path / "r")
    assert Toy.calls == ["ok", "nan"] and not (tmp_path / "r" / "summary.md").exists()
    Toy.calls = []
    resumed = run_application(Toy(ToySettings(methods=("ok", "nan"), fail_on="nan").replace(fail_on="")),
                              tmp_path / "r2")
    assert resumed.diverged == ["nan stopped at step 3: non-finite loss"]
    # resuming the interrupted run reruns only the unfinished unit (the settings must match)
    Toy.calls = []
    with pytest.raises(Exception, match="other settings"):
        run_application(Toy(ToySettings(methods=("ok", "nan"))), tmp_path / "r", resume=True)
    with pytest.raises(KeyboardInterrupt):
        run_application(Toy(settings), tmp_path / "r", resume=True)
    assert Toy.calls == ["nan"]


def test_the_unlearning_example_runs_from_python_and_from_the_cli(mnist5k_mlps, tmp_path, monkeypatch, capsys):
    shutil.copy(EXAMPLE, tmp_path / "unlearn.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("unlearn", None)
    checkpoint = mnist5k_mlps["a"]["checkpoint"]
    outcome = run("unlearn:unlearn", checkpoint, out=tmp_path / "py", forget_class=3, max_steps=15,
                  step_size=0.5, methods=("geodesic", "euclidean"))
    rows = {r["method"]: r for r in outcome.rows}
    for row in rows.values():
        assert row["forget_accuracy"] < 0.5  # the class is forgotten …
    # … and the geodesic keeps the other classes better than plain gradient steps of the same length
    assert rows["geodesic"]["test_accuracy_end"] > rows["euclidean"]["test_accuracy_end"]
    assert (tmp_path / "py" / "paths.png").exists()
    code = None
    try:
        main(["unlearn:unlearn", str(checkpoint), "--forget-class", "3", "--max-steps", "15",
              "--step-size", "0.5", "--methods", "geodesic", "--out", str(tmp_path / "cli")])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code in (None, 0), capsys.readouterr().err
    cli_rows = (tmp_path / "cli" / "results.csv").read_text().splitlines()
    assert cli_rows[0].startswith("method,") and cli_rows[1].startswith("geodesic,")
    assert cli_rows[1] == _csv_row(tmp_path / "py" / "results.csv", "geodesic")


def _csv_row(path: Path, method: str) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith(method + ","))


def test_the_readme_shows_the_example_exactly_as_it_runs():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Adding an application", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text()
    assert len(block.strip().splitlines()) <= 30  # an Objective plus its registration in at most 30 lines


def test_connect_takes_a_users_metric_by_import_path(mnist5k_mlps, tmp_path, monkeypatch, capsys):
    """A metric written as the README shows (only mvp), named package.module:Name on the command line."""
    (tmp_path / "mymetrics.py").write_text(
        "import torch\nfrom weightgeo.metrics import Metric\n\n"
        "class Scaled(Metric):\n    product_cost = 0\n\n"
        "    def __init__(self, model, inputs):\n        self.scale = 4.0\n\n"
        "    def mvp(self, theta, v):\n        return self.scale * v\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b = (str(mnist5k_mlps[k]["checkpoint"]) for k in ("a", "b"))
    main(["connect", a, b, "--method", "linear,relax", "--metric", "mymetrics:Scaled", "--budget", "20",
          "--nodes", "2", "--plane-grid", "0", "--points", "5", "--out", str(tmp_path / "c")])
    import csv

    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "c" / "results.csv"))}
    # under G = 4I the metric length of the straight line is twice its Euclidean length
    assert float(rows["linear"]["metric_length"]) == pytest.approx(2 * float(rows["linear"]["euclidean_length"]),
                                                                     rel=1e-4)


def test_sparsify_takes_a_users_metric_by_import_path(mnist5k_mlps, tmp_path, monkeypatch):
    """G = 4I by import path gives the Euclidean metric's geodesic pruning: the same damped directions
    (∇/(4 + μ) against ∇/(1 + μ)), the same Euclidean steps, so the same sparse network."""
    (tmp_path / "mymetrics.py").write_text(
        "from weightgeo.metrics import Metric\n\n"
        "class Scaled(Metric):\n    product_cost = 0\n\n"
        "    def __init__(self, model, inputs):\n        self.scale = 4.0\n\n"
        "    def mvp(self, theta, v):\n        return self.scale * v\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    a = str(mnist5k_mlps["a"]["checkpoint"])
    rows = {}
    for metric in ("mymetrics:Scaled", "euclidean"):
        out = tmp_path / metric.replace(":", "_")
        main(["sparsify", a, "--sparsity", "0.8", "--method", "geodesic", "--budget", "30", "--metric", metric,
              "--no-checkpoints", "--out", str(out)])
        import csv

        rows[metric] = next(csv.DictReader(open(out / "results.csv")))
    scaled, euclidean = rows["mymetrics:Scaled"], rows["euclidean"]
    assert scaled["grad_evals"] == euclidean["grad_evals"]
    # accuracies are fractions: the same sparse network classifies the same digits, with the same loss
    assert scaled["test_accuracy"] == euclidean["test_accuracy"]
    assert float(scaled["test_loss"]) == pytest.approx(float(euclidean["test_loss"]), rel=1e-4)
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsify", a, "--sparsity", "0.8", "--metric", "mymetrics:Missing", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
