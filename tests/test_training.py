"""Training on flat θ: reproducible, masks respected, batch norm on private buffers."""

from __future__ import annotations

import pytest
import torch

from weightgeo import FunctionalModel
from weightgeo.data import Data
from weightgeo.errors import WeightgeoError
from weightgeo.models import build_model
from weightgeo.training import evaluate, predict, train
from weightgeo.workflows import train_model


def toy_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.randn(3, 1, 8, 8, generator=g)
    x = centres[y] + 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    return Data(x, y, 3, "toy")


def test_training_learns_and_counts_gradient_evaluations():
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=3, image_size=8)
    fmodel = FunctionalModel(model)
    data = toy_data()
    before = evaluate(fmodel, fmodel.theta(), data)
    result = train(fmodel, fmodel.theta(), data, epochs=5, lr=0.05, batch_size=16)
    after = evaluate(fmodel, result.theta, data)
    assert result.grad_evals == 5 * 6
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.9
    logits = predict(fmodel, result.theta, data.x, batch_size=7)
    assert logits.shape == (96, 3)
    assert (logits.argmax(-1) == data.y).float().mean().item() == pytest.approx(after["accuracy"])


def test_same_seed_same_numbers():
    data = toy_data()
    thetas = []
    for _ in range(2):
        torch.manual_seed(1)
        fmodel = FunctionalModel(build_model("small-cnn", num_classes=3, image_size=8))
        thetas.append(train(fmodel, fmodel.theta(), data, epochs=1, seed=3).theta)
    assert torch.equal(thetas[0], thetas[1])


def test_mask_keeps_weights_at_zero():
    torch.manual_seed(0)
    fmodel = FunctionalModel(build_model("small-cnn", num_classes=3, image_size=8))
    theta = fmodel.theta()
    mask = (torch.rand_like(theta) > 0.7).float()
    result = train(fmodel, theta, toy_data(), max_steps=10, mask=mask)
    assert torch.all(result.theta[mask == 0] == 0)
    assert torch.any(result.theta[mask == 1] != (theta * mask)[mask == 1])
    assert result.grad_evals == 10


def test_batch_norm_trains_private_buffers_only():
    torch.manual_seed(0)
    model = build_model("small-cnn", num_classes=3, image_size=8, batch_norm=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fmodel = FunctionalModel(model)
    result = train(fmodel, fmodel.theta(), toy_data(), epochs=1)
    changed = [k for k in result.buffers if "running_mean" in k and not torch.equal(result.buffers[k], state[k])]
    assert changed  # the statistics were updated in train mode ...
    for k, v in model.state_dict().items():  # ... but not in the user's module
        assert torch.equal(v, state[k])
    assert all(torch.equal(b, state[k]) for k, b in fmodel.buffers.items())


def test_bad_learning_rate_is_refused():
    fmodel = FunctionalModel(build_model("small-cnn", num_classes=3, image_size=8))
    with pytest.raises(WeightgeoError, match="learning rate"):
        train(fmodel, fmodel.theta(), toy_data(), lr=0)


def test_train_model_is_reproducible(tmp_path):
    a = train_model("mlp", "mnist5k", tmp_path / "a", config={"hidden": [16]}, epochs=1, seed=5, device="cpu")
    b = train_model("mlp", "mnist5k", tmp_path / "b", config={"hidden": [16]}, epochs=1, seed=5, device="cpu")
    assert torch.equal(a["theta"], b["theta"]) and a["test_accuracy"] == b["test_accuracy"]
