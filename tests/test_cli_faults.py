"""File-system errors and unexpected failures at the command line: one line, a non-zero exit, no traceback."""

from __future__ import annotations

import errno
import os

import pytest

import weightgeo.rundir
from weightgeo.cli import main

TRAIN = ["train", "--epochs", "1", "--hidden", "8", "--device", "cpu"]


def _run(args, capsys) -> tuple[int, list[str]]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def test_out_below_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _run([*TRAIN, "--out", str(tmp_path / "file" / "run")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("Error: ")


def test_a_folder_name_longer_than_the_file_system_allows_is_one_line(tmp_path, capsys):
    code, err = _run([*TRAIN, "--out", str(tmp_path / ("n" * 300))], capsys)
    assert code == 2 and len(err) == 1 and "longer than 255" in err[0]
    deep = tmp_path.joinpath(*(["d" * 200] * 25))  # every name legal, the whole path too long
    code, err = _run([*TRAIN, "--out", str(deep)], capsys)
    assert code == 2 and len(err) == 1 and "file name too long" in err[0]


@pytest.mark.parametrize("number, words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                           (errno.ENOSPC, "no space left")])
def test_write_errors_are_one_line(tmp_path, capsys, monkeypatch, number, words):
    def refuse(path, data):
        raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(weightgeo.rundir, "_atomic_write", refuse)
    code, err = _run([*TRAIN, "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and len(err) == 1 and words in err[0] and str(tmp_path) in err[0]


def test_an_unexpected_error_is_one_line_with_a_hint_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(weightgeo.rundir.RunDirectory, "open", broken)
    code, err = _run([*TRAIN, "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and len(err) == 1
    assert "unexpected RuntimeError: something nobody foresaw" in err[0] and "--debug" in err[0]
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        main(["--debug", *TRAIN, "--out", str(tmp_path / "run2")])
