"""The command line: one clear line and a non-zero exit on bad input, nothing half-written."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from weightgeo.cli import cli, main


def run_main(args, capsys):
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert lines[0].startswith("Error: ")
    return lines[0]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/weightgeo-should-not-exist",))


@pytest.fixture
def bad_checkpoints(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    code = tmp_path / "code.pt"
    with open(code, "wb") as handle:
        pickle.dump({"format": "weightgeo-checkpoint", "payload": RunsCode()}, handle)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    return {"missing": tmp_path / "nope.pt", "plain": plain, "code": code, "garbage": garbage}


@pytest.mark.parametrize("kind", ["missing", "plain", "code", "garbage"])
def test_bad_checkpoints_are_refused_in_one_line(bad_checkpoints, kind, capsys):
    if os.path.exists("/tmp/weightgeo-should-not-exist"):
        os.unlink("/tmp/weightgeo-should-not-exist")
    code, out, err = run_main(["evaluate", str(bad_checkpoints[kind])], capsys)
    assert code != 0
    line = one_line_error(err)
    assert str(bad_checkpoints[kind].name) in line or "does not exist" in line
    assert not os.path.exists("/tmp/weightgeo-should-not-exist")


def test_unknown_model_and_dataset(tmp_path, capsys):
    code, _, err = run_main(["train", "--model", "resnet", "--out", str(tmp_path / "r")], capsys)
    assert code != 0 and "resnet" in one_line_error(err)
    code, _, err = run_main(["train", "--dataset", "imagenet", "--out", str(tmp_path / "r")], capsys)
    assert code != 0 and "imagenet" in one_line_error(err)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_missing_dataset_without_download(tmp_path, capsys):
    code, _, err = run_main(
        ["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")],
        capsys,
    )
    line = one_line_error(err)
    assert code != 0 and "--download" in line and "nothing" in line
    assert not (tmp_path / "r").exists()


def test_non_empty_output_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main(["train", "--epochs", "1", "--out", str(out)], capsys)
    assert code != 0 and "--overwrite" in one_line_error(err)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_main(["train", "--epochs", "1", "--hidden", "32", "--out", str(out), "--device", "cpu"], capsys)
    assert code == 0
    assert {"model.pt", "config.json", "metrics.jsonl", "training_curves.png"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["hidden"] == [32] and config["seed"] == 0
    code, stdout, _ = run_main(["evaluate", str(out)], capsys)  # a run directory works too
    scores = json.loads(stdout)
    assert scores["accuracy"] > 0.8 and scores["dataset"] == "mnist5k"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert scores["accuracy"] == pytest.approx(rows[-1]["test_accuracy"])


def _all_commands() -> dict:
    """Every command of the CLI: the built-in ones and those generated for the applications."""
    import click

    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def test_step_size_is_validated_by_every_path_command(tmp_path, capsys):
    """Every command with --step-size refuses 0, negative and non-numeric values in one line."""
    commands = {name: cmd for name, cmd in _all_commands().items() if any(p.name == "step_size" for p in cmd.params)}
    assert len(commands) >= 3  # sparsify, connect, continual (and any registered application)
    for name, command in commands.items():
        for bad in ("0", "-0.5", "abc"):
            args = [name]
            existing = tmp_path / "some-file.pt"  # arguments that exist, so the option is what fails
            existing.write_text("x")
            args += [str(existing)] * sum(1 for p in command.params if p.param_type_name == "argument" and p.required)
            code, _, err = run_main(args + ["--step-size", bad, "--out", str(tmp_path / name)], capsys)
            assert code != 0, (name, bad)
            assert "step-size" in one_line_error(err) or "step_size" in err, (name, bad, err)


def test_help_explains_every_option():
    from click.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "train" in result.output
    for name, command in _all_commands().items():
        for param in command.params:
            if param.param_type_name == "option" and param.name not in ("help",):
                assert param.help, f"{name} --{param.name} has no help text"
