"""connect under faults: diverging methods, kill -9 and --resume, --overwrite, huge traverse steps.

Two small random MLPs on the embedded mnist5k digits stand in for trained networks (what is
checked is how a run ends and what it writes, not accuracy). Every results.csv comparison leaves
out the wall-clock columns ``seconds`` and ``eval_seconds``; everything else must be identical.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import mlp_checkpoint_pair
from weightgeo.applications.connect import (
    BENT_CURVES,
    ConnectSettings,
    ConnectTask,
    CurveLoss,
    run_method,
)
from weightgeo.applications.connect.curves import curve_from_points
from weightgeo.cli import cli, main
from weightgeo.data import Data
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model
from weightgeo.objectives import TargetPoint
from weightgeo.paths import Path as WeightPath
from weightgeo.rundir import load_tensors

ROOT = Path(__file__).resolve().parents[1]
CLOCK = ("seconds", "eval_seconds")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two MLP checkpoints (784-32-10, seeds 0 and 1) on mnist5k."""
    return mlp_checkpoint_pair(tmp_path_factory.mktemp("pair"), 32)


SMALL = ["--points", "5", "--nodes", "3", "--device", "cpu"]


def _rows(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in CLOCK} for row in csv.DictReader((out / "results.csv").open())]


def _all_saved_tensors_finite(out: Path) -> int:
    count = 0
    for file in out.rglob("*.pt"):
        for value in _tensors(load_tensors(file)):
            assert bool(torch.isfinite(value).all()), file
            count += 1
    return count


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)


@pytest.mark.parametrize(("args", "method", "line"), [
    (["--method", "linear,relax", "--relax-lr", "1e9"], "relax",
     "relax stopped at step 1: non-finite loss — lower --relax-lr"),
    (["--method", "linear,bezier", "--curve-lr", "1e12"], "bezier", "— lower --curve-lr"),
    (["--method", "linear,traverse", "--step-size", "1e40"], "traverse",
     "traverse stopped at step 1: non-finite step — lower --step-size"),
])
def test_a_diverging_method_exits_3_in_one_line_and_saves_nothing_non_finite(pair, tmp_path, capsys, args,
                                                                            method, line):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", *pair, *args, "--budget", "60", "--plane-grid", "0", *SMALL, "--out", str(out)])
    assert exit_info.value.code == 3
    err = [e for e in capsys.readouterr().err.splitlines() if e.startswith("Error")]
    assert len(err) == 1 and err[0].startswith(f"Error: {method} stopped at step") and line in err[0]
    rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["linear"]["stop_reason"] == "done" and rows["linear"]["stop_message"] == ""
    assert float(rows["linear"]["min_test_accuracy"]) > 0  # the other method's row is written as usual
    assert rows[method]["stop_reason"] == "non-finite" and line in rows[method]["stop_message"]
    assert _all_saved_tensors_finite(out) >= 4  # both curves' points, nothing non-finite
    evaluation = json.loads((out / "paths" / method / "evaluation.json").read_text())
    assert len(evaluation) == 5  # the last finite curve was evaluated
    assert "Stopped on a non-finite value" in (out / "results.md").read_text()


def test_traverse_with_a_huge_step_lands_on_the_target_instead_of_standing_still():
    """TargetPoint.step_limit of a step of length 1e30: ||s||² overflows float32; the limit must
    still be the line minimiser t* = (θ_t − θ)·s/||s||², so the walk reaches θ_b in one step."""
    target = TargetPoint(torch.tensor([3.0, 4.0, 0.0]))
    theta = torch.zeros(3)
    for step, expected in (([1e30, 0.0, 0.0], 3e-30), ([1e30, 1e30, 0.0], 3.5e-30), ([1e-30, 0.0, 0.0], 1.0),
                           ([0.0, 0.0, 0.0], 0.0), ([-1.0, 0.0, 0.0], 0.0), ([1.0, 2.0, 0.0], 1.0)):
        limit = target.step_limit(theta, torch.tensor(step))
        assert float(limit) == pytest.approx(expected, rel=1e-5), step
    assert not bool(torch.isfinite(target.step_limit(theta, torch.tensor([float("inf"), 0.0, 0.0]))))
    fm = FunctionalModel(build_model("mlp", input_size=6, hidden=[4], num_classes=3))
    data = Data(torch.randn(8, 1, 2, 3), torch.arange(8) % 3, 3, "toy")
    theta_b = fm.theta() + 1.0
    task = ConnectTask(fm, fm.theta(), theta_b, data, data, ConnectSettings(
        metric="euclidean", traverse_weight=0.0, step_size=1e30, tol=1e-6, budget=10))
    result = run_method("traverse", task)
    assert result.stop_reason == "done" and result.info["steps"] == 1
    assert result.info["final_segment_length"] < 1e-5
    torch.testing.assert_close(result.curve.vertices[1], theta_b)


def test_unknown_curve_kinds_are_refused_in_one_line():
    fm = FunctionalModel(build_model("mlp", input_size=6, hidden=[4], num_classes=3))
    theta = fm.theta()
    for build in (lambda: CurveLoss(fm, "spiral", theta, theta, 0.0), lambda: BENT_CURVES["spiral"],
                  lambda: curve_from_points("spiral", [theta, theta])):
        with pytest.raises(WeightgeoError, match="spiral") as err:
            build()
        assert "\n" not in str(err.value)


def test_help_lists_exactly_the_accepted_choices_and_old_flags_still_work(pair, tmp_path, capsys):
    text = " ".join(CliRunner().invoke(cli, ["connect", "--help"]).output.split())
    assert "output, fisher, diag-fisher, euclidean, kfac, nystrom" in text and "package.module:Name" in text
    assert "--max-steps" not in text and "--bn-images" in text and "--no-bn-recompute" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", *pair, "--metric", "nonsense", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "unknown metric 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["connect", *pair, "--max-steps", "5", "--out", str(tmp_path / "y")])
    assert exit_info.value.code == 2 and "No such option" in capsys.readouterr().err
    out = tmp_path / "z"
    main(["connect", *pair, "--method", "linear", "--no-bn-recompute", "--plane-grid", "0", *SMALL,
          "--out", str(out)])
    assert json.loads((out / "config.json").read_text())["settings"]["bn_recompute"] is False


def test_overwrite_leaves_no_file_of_the_previous_run(pair, tmp_path):
    out = tmp_path / "run"
    main(["connect", *pair, "--method", "linear,bezier", "--budget", "10", "--plane-grid", "3", *SMALL,
          "--out", str(out)])
    assert (out / "plane.png").exists() and (out / "paths" / "bezier").exists()
    main(["connect", *pair, "--method", "linear", "--plane-grid", "0", *SMALL, "--out", str(out), "--overwrite"])
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert not any("bezier" in p or "plane" in p for p in left), left
    assert [r["method"] for r in _rows(out)] == ["linear"]


# -- kill -9 and --resume ----------------------------------------------------------------------------
RESUMABLE = ["--method", "linear,relax,bezier", "--budget", "400", "--checkpoint-every", "2", "--plane-grid", "3",
             *SMALL]


@pytest.fixture(scope="module")
def uninterrupted(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    main(["connect", *pair, *RESUMABLE, "--out", str(out)])
    return out


def _start(args: list[str]) -> subprocess.Popen:
    threads = torch.get_num_threads()  # the same thread count as this process: the same numbers
    code = f"import torch; torch.set_num_threads({threads}); from weightgeo.cli import main; main({args!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _kill_when(process: subprocess.Popen, marker: Path, timeout: float = 120.0) -> None:
    """SIGKILL the run as soon as ``marker`` exists (a method's first saved progress)."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_runs_killed_in_relax_and_in_bezier_resume_to_the_uninterrupted_results(pair, uninterrupted, tmp_path):
    out = tmp_path / "run"
    first = _start(["connect", *pair, *RESUMABLE, "--out", str(out)])
    _kill_when(first, out / "paths" / "relax" / "relax_state.pt")
    assert not (out / "results.csv").exists()
    second = _start(["connect", *pair, *RESUMABLE, "--out", str(out), "--resume"])
    _kill_when(second, out / "state" / "bezier.pt")
    assert not (out / "results.csv").exists()
    assert [json.loads(line)["unit"] for line in (out / "units.jsonl").read_text().splitlines()] == ["linear", "relax"]
    main(["connect", *pair, *RESUMABLE, "--out", str(out), "--resume"])
    assert _rows(out) == _rows(uninterrupted)
    assert (out / "evaluation.csv").read_text() == (uninterrupted / "evaluation.csv").read_text()
    plane, reference = (json.loads((d / "plane.json").read_text()) for d in (out, uninterrupted))
    assert plane["test_loss"] == reference["test_loss"] and plane["paths"] == reference["paths"]


def test_the_loss_plane_resumes_from_its_saved_rows(pair, uninterrupted, tmp_path):
    """A run interrupted inside the plane unit keeps its finished rows: they are read back, not
    recomputed (a sentinel row proves it), and the others are computed as before."""
    out = tmp_path / "run"
    import shutil

    shutil.copytree(uninterrupted, out)
    units = (out / "units.jsonl").read_text().splitlines()
    assert json.loads(units[-1])["unit"] == "plane"
    (out / "units.jsonl").write_text("\n".join(units[:-1]) + "\n")
    (out / "plane.json").unlink()
    reference = json.loads((uninterrupted / "plane.json").read_text())
    sentinel = [123.0] * len(reference["x"])
    (out / "state").mkdir(exist_ok=True)  # a finished run leaves no state folder
    torch.save({"rows": [sentinel]}, out / "state" / "plane.pt")
    main(["connect", *pair, *RESUMABLE, "--out", str(out), "--resume"])
    plane = json.loads((out / "plane.json").read_text())
    assert plane["test_loss"][0] == sentinel and plane["test_loss"][1:] == reference["test_loss"][1:]
    assert not (out / "state" / "plane.pt").exists()


class Interrupted(BaseException):
    """Stands for a kill: nothing in the library catches it."""


@pytest.mark.parametrize("where", ["walk", "final-segment"])
def test_traverse_interrupted_in_its_walk_or_its_final_segment_resumes_to_the_same_path(pair, tmp_path,
                                                                                     monkeypatch, where):
    """The walk's state (metric batches and the task loss's batches) is saved in each waypoint's
    file; interrupted right after the third such waypoint, or after appending its final segment, the resumed
    run ends with the uninterrupted path and row."""
    args = ["connect", *pair, "--method", "traverse", "--budget", "60", "--cg-iters", "3", "--tol", "1e-6",
            "--traverse-weight", "1", "--plane-grid", "0", *SMALL]
    main([*args, "--out", str(tmp_path / "whole")])
    if where == "walk":
        original, calls = WeightPath.save_waypoint, []

        def save_waypoint(self, k, theta, state=None):
            original(self, k, theta, state)  # saved with the walk's state: then the "kill"
            if state is not None:
                calls.append(k)
            if len(calls) == 3:
                raise Interrupted

        monkeypatch.setattr(WeightPath, "save_waypoint", save_waypoint)
    else:
        def finish(self, stop):
            raise Interrupted

        monkeypatch.setattr(WeightPath, "finish", finish)
    with pytest.raises(Interrupted):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.undo()
    main([*args, "--out", str(tmp_path / "cut"), "--resume"])
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    cut, whole = (WeightPath.load(tmp_path / d / "paths" / "traverse") for d in ("cut", "whole"))
    assert cut.records == whole.records and cut.stages == whole.stages
    assert whole.records[-1]["final_segment"] is True and 0 < float(_rows(tmp_path / "whole")[0]["steps"]) < 20
