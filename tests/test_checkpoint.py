"""Checkpoint save/load: round trips, run directories, refusal of bad or unsafe files."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch

from weightgeo.errors import WeightgeoError
from weightgeo.models import (
    Checkpoint,
    build_model,
    checkpoints_compatible,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("mlp", hidden=[16], num_classes=4).eval()


MLP_CONFIG = {"hidden": [16], "num_classes": 4}


def save_mlp(path: Path, model: torch.nn.Module, **kwargs) -> Path:
    return save_checkpoint(path, model, "mlp", MLP_CONFIG, "mnist5k", 0.5, **kwargs)


def assert_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(WeightgeoError, match=match) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_round_trip_gives_identical_outputs(tmp_path: Path, mlp: torch.nn.Module) -> None:
    written = save_checkpoint(
        tmp_path / "a.pt", mlp, "mlp", MLP_CONFIG, "mnist5k", 0.875, extra={"epochs": 3, "seed": 1}
    )
    assert written == tmp_path / "a.pt"
    ckpt = load_checkpoint(written)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.name == "mlp"
    assert ckpt.config == {"input_size": 784, "hidden": [16], "num_classes": 4}
    assert ckpt.dataset == "mnist5k"
    assert ckpt.test_accuracy == 0.875
    assert ckpt.extra == {"epochs": 3, "seed": 1}
    assert ckpt.path == written
    assert not ckpt.model.training
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), mlp(x))


def test_file_loads_with_plain_weights_only_torch_load(
    tmp_path: Path, mlp: torch.nn.Module
) -> None:
    payload = torch.load(save_mlp(tmp_path / "a.pt", mlp), weights_only=True)
    assert payload["format"] == "weightgeo-checkpoint"
    assert payload["version"] == 1
    assert payload["model"] == "mlp"
    assert set(payload["state_dict"]) == set(mlp.state_dict())


def test_round_trip_with_batch_norm_buffers(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("vgg11", width=0.125)
    model.train()
    model(torch.randn(4, 3, 32, 32))  # move the running statistics away from their defaults
    model.eval()
    ckpt = load_checkpoint(
        save_checkpoint(tmp_path / "v.pt", model, "vgg11", {"width": 0.125}, "cifar10", None)
    )
    assert ckpt.test_accuracy is None
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ckpt.model(x), model(x))


def test_explicit_state_dict_is_stored_instead_of_the_models(
    tmp_path: Path, mlp: torch.nn.Module
) -> None:
    other = build_model("mlp", **MLP_CONFIG)
    ckpt = load_checkpoint(save_mlp(tmp_path / "a.pt", mlp, state_dict=other.state_dict()))
    for key, value in other.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[key], value)


def test_run_directory_path(tmp_path: Path, mlp: torch.nn.Module) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert save_mlp(run, mlp) == run / "model.pt"
    assert load_checkpoint(run).path == run / "model.pt"
    assert load_checkpoint(str(run / "model.pt")).name == "mlp"


def test_save_creates_parent_directories(tmp_path: Path, mlp: torch.nn.Module) -> None:
    target = tmp_path / "deep" / "er" / "model.pt"
    save_mlp(target, mlp)
    assert target.is_file()


def test_unstorable_extra_is_refused_before_writing(tmp_path: Path, mlp: torch.nn.Module) -> None:
    with pytest.raises(TypeError, match="only tensors"):
        save_mlp(tmp_path / "a.pt", mlp, extra={"when": object()})
    assert list(tmp_path.iterdir()) == []


def test_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nope.pt", "does not exist")


def test_directory_without_model_pt(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path, "directory without a model.pt")


def test_plain_state_dict_is_not_a_checkpoint(tmp_path: Path, mlp: torch.nn.Module) -> None:
    torch.save(mlp.state_dict(), tmp_path / "sd.pt")
    assert_one_line_error(tmp_path / "sd.pt", "not a weightgeo checkpoint")


@pytest.mark.parametrize(
    "content", [b"", b"this is not a checkpoint \x00\x01\x02", b"PK\x03\x04xx"]
)
def test_garbage_bytes_are_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "g.pt").write_bytes(content)
    assert_one_line_error(tmp_path / "g.pt", "not a weightgeo checkpoint")


class _RunsShell:
    """Unpickling this calls os.system: exactly what loading a checkpoint must never do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _OpensFile:
    """Unpickling this creates a file through builtins.open."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload_class", [_RunsShell, _OpensFile])
@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_code_is_refused_and_never_runs(
    tmp_path: Path, payload_class: type, writer: str
) -> None:
    marker = tmp_path / "PWNED"
    evil = payload_class(marker)
    path = tmp_path / "evil.pt"
    # A real-looking checkpoint with the payload hidden inside it.
    content = {"format": "weightgeo-checkpoint", "version": 1, "model": "mlp", "extra": evil}
    if writer == "pickle":
        with path.open("wb") as handle:
            pickle.dump(content, handle, protocol=2)
    else:
        torch.save(content, path)
    assert_one_line_error(path, r"refusing to load .*: it contains pickled code")
    assert not marker.exists()


def test_unknown_model_name(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = save_mlp(tmp_path / "a.pt", mlp)
    payload = torch.load(path, weights_only=True)
    payload["model"] = "resnet9000"
    torch.save(payload, path)
    assert_one_line_error(path, "unknown model 'resnet9000'.*mlp")


def test_newer_version_is_refused(tmp_path: Path, mlp: torch.nn.Module) -> None:
    path = save_mlp(tmp_path / "a.pt", mlp)
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    assert_one_line_error(path, "version 99")


def test_weights_that_do_not_fit_the_model(tmp_path: Path, mlp: torch.nn.Module) -> None:
    other = build_model("mlp", hidden=[17], num_classes=4)
    path = save_mlp(tmp_path / "a.pt", mlp, state_dict=other.state_dict())
    assert_one_line_error(path, "do not fit model mlp")


def test_crash_during_save_keeps_previous_file_and_leaves_no_temp(
    tmp_path: Path, mlp: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_mlp(tmp_path / "model.pt", mlp)
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    changed = build_model("mlp", **MLP_CONFIG)
    with pytest.raises(OSError, match="disk full"):
        save_mlp(path, changed)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    x = torch.randn(2, 784)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path).model(x), mlp(x))


def test_compatible_checkpoints_pass(tmp_path: Path, mlp: torch.nn.Module) -> None:
    a = load_checkpoint(save_mlp(tmp_path / "a.pt", mlp))
    b = load_checkpoint(save_mlp(tmp_path / "b.pt", build_model("mlp", **MLP_CONFIG)))
    checkpoints_compatible(a, b)


def test_different_architectures_are_incompatible(tmp_path: Path, mlp: torch.nn.Module) -> None:
    a = load_checkpoint(save_mlp(tmp_path / "a.pt", mlp))
    wider = build_model("mlp", hidden=[32], num_classes=4)
    b = load_checkpoint(
        save_checkpoint(tmp_path / "b.pt", wider, "mlp", {"hidden": [32], "num_classes": 4}, "x", 0)
    )
    with pytest.raises(WeightgeoError, match=r"differ in architecture: mlp with hidden=\[16\]"):
        checkpoints_compatible(a, b)
    small = build_model("small-cnn")
    c = load_checkpoint(save_checkpoint(tmp_path / "c.pt", small, "small-cnn", {}, "x", None))
    with pytest.raises(WeightgeoError, match="a.pt is mlp, .*c.pt is small-cnn"):
        checkpoints_compatible(a, c)
