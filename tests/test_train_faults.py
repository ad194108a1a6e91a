"""Training loses nothing and never reports a wrong result: kill -9 and --resume, Ctrl-C, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from weightgeo.cli import main

ARGS = ["train", "--hidden", "16", "--epochs", "12", "--batch-size", "200", "--device", "cpu"]


def _run(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "weightgeo", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_for_epochs(out: Path, epochs: int, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= epochs:
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before epoch {epochs}: {process.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("timed out")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "full"
    process = _run([*ARGS, "--out", str(out)])
    assert process.wait(timeout=300) == 0, process.stderr.read()
    return out


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    process = _run([*ARGS, "--out", str(out)])
    _wait_for_epochs(out, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert 3 <= done < 12  # killed half-way, with its completed epochs on disk
    assert _weights(out).keys() == _weights(uninterrupted).keys()  # a readable checkpoint of a finished epoch
    resumed = _run([*ARGS, "--out", str(out), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    full, again = _weights(uninterrupted), _weights(out)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert (out / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_ctrl_c_keeps_every_completed_epoch(tmp_path):
    out = tmp_path / "interrupted"
    process = _run([*ARGS, "--out", str(out)])
    _wait_for_epochs(out, 2, process)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    err = [line for line in process.stderr.read().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("Interrupted") and "--resume" in err[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 2 and [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(bool(torch.isfinite(t).all()) for t in _weights(out).values() if t.is_floating_point())


def test_a_diverging_run_exits_3_in_one_line_and_saves_no_non_finite_weights(tmp_path, capsys):
    out = tmp_path / "diverged"
    try:
        main([*ARGS[:-2], "--epochs", "3", "--lr", "1e6", "--out", str(out), "--device", "cpu"])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 3 and len(err) == 1
    assert err[0].startswith("Error: train stopped at step") and "non-finite" in err[0] and "--lr" in err[0]
    if (out / "model.pt").exists():  # only a completed epoch's checkpoint may be there
        assert all(bool(torch.isfinite(t).all()) for t in _weights(out).values() if t.is_floating_point())
    assert "non-finite" in (out / "summary.md").read_text()
