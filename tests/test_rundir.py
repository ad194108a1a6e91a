"""Run directories: overwrite cleans, resume checks the settings, files are atomic, strict JSON, umask."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import pytest
import torch

from weightgeo.errors import WeightgeoError
from weightgeo.rundir import RunDirectory, append_jsonl, read_jsonl, save_tensors, write_json


def test_a_non_empty_directory_needs_overwrite_or_resume(tmp_path):
    out = tmp_path / "run"
    run = RunDirectory.open(out, config={"a": 1})
    (out / "stale.png").write_text("old")
    with pytest.raises(WeightgeoError, match="--overwrite.*--resume"):
        RunDirectory.open(out, config={"a": 1})
    RunDirectory.open(out, overwrite=True, config={"a": 2})
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the stale file is gone
    assert json.loads((out / "config.json").read_text()) == {"a": 2}
    assert run.path == out


def test_overwrite_refuses_a_directory_that_holds_no_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WeightgeoError, match="no weightgeo run"):
        RunDirectory.open(tmp_path, overwrite=True, config={})
    assert (tmp_path / "notes.txt").exists()


def test_resume_needs_the_same_settings_and_keeps_the_units(tmp_path):
    run = RunDirectory.open(tmp_path / "r", config={"lr": 0.1, "seed": 0})
    run.record("geodesic", [{"acc": 0.9}])
    again = RunDirectory.open(tmp_path / "r", resume=True, config={"lr": 0.1, "seed": 0})
    assert again.completed() == {"geodesic": [{"acc": 0.9}]}
    with pytest.raises(WeightgeoError, match="lr"):
        RunDirectory.open(tmp_path / "r", resume=True, config={"lr": 0.2, "seed": 0})
    with pytest.raises(WeightgeoError, match="no run to continue"):
        RunDirectory.open(tmp_path / "empty", resume=True, config={})
    with pytest.raises(WeightgeoError, match="contradict"):
        RunDirectory.open(tmp_path / "r", resume=True, overwrite=True)


def test_json_is_strict_and_files_follow_the_umask(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [1.0, float("inf")]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": [1.0, None]}
    append_jsonl(tmp_path / "rows.jsonl", {"z": float("-inf")})
    assert read_jsonl(tmp_path / "rows.jsonl") == [{"z": None}]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~mask


def test_saved_tensors_are_byte_reproducible_and_hold_no_temporary_name(tmp_path):
    save_tensors(tmp_path / "a.pt", {"theta": torch.arange(5.0)})
    save_tensors(tmp_path / "b.pt", {"theta": torch.arange(5.0)})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    names = zipfile.ZipFile(tmp_path / "a.pt").namelist()
    assert all(not n.startswith(".") and "tmp" not in n for n in names)


def test_state_of_a_unit_round_trips(tmp_path):
    run = RunDirectory.open(tmp_path / "r", config={})
    assert run.load_state("seed0/ewc") is None
    run.save_state("seed0/ewc", {"theta": torch.ones(3), "task": 2})
    state = run.load_state("seed0/ewc")
    assert state["task"] == 2 and torch.equal(state["theta"], torch.ones(3))


def test_names_longer_than_the_file_system_allows_are_one_line(tmp_path):
    with pytest.raises(WeightgeoError, match="longer than 255"):
        RunDirectory.open(tmp_path / ("x" * 300), config={})
