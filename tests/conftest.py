"""Shared fixtures: small float64 models as data (a table of cases), and reproducible seeds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(min(2, torch.get_num_threads()))


class TinyCNN(nn.Module):
    """Conv + (optional) batch norm + max-pool + linear: the CNN case of the metric tests."""

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.norm = nn.BatchNorm2d(3) if batch_norm else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.head(self.pool(torch.tanh(self.norm(self.conv(x)))).flatten(1))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))


MODEL_CASES = {
    # name: (builder, input shape)
    "mlp": (_mlp, (5,)),
    "cnn": (lambda: TinyCNN(False), (1, 8, 8)),
    "cnn-bn": (lambda: TinyCNN(True), (1, 8, 8)),
}


@pytest.fixture(params=sorted(MODEL_CASES))
def model_case(request):
    """(name, float64 model, float64 inputs batch of 7) for every small model of the table."""
    torch.manual_seed(0)
    build, shape = MODEL_CASES[request.param]
    model = build().double()
    if isinstance(getattr(model, "norm", None), nn.BatchNorm2d):
        # non-trivial running statistics, so eval-mode batch norm is not the identity
        model.norm.running_mean.uniform_(-0.5, 0.5)
        model.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(7, *shape, dtype=torch.float64)
    return request.param, model, x


@pytest.fixture(scope="session")
def mnist5k_mlps(tmp_path_factory):
    """Two default MLPs trained on mnist5k from seeds 0 and 1 (8 epochs each), shared by the suite.

    Returns {"a": result, "b": result}: ``weightgeo.workflows.train_model`` dicts with
    "theta", "model", "test_accuracy" and "checkpoint" (a run directory's model.pt).
    """
    from weightgeo.workflows import train_model

    root = tmp_path_factory.mktemp("mnist5k_mlps")
    return {
        name: train_model("mlp", "mnist5k", root / name, epochs=8, seed=seed, device="cpu")
        for name, seed in (("a", 0), ("b", 1))
    }


def mlp_checkpoint_pair(root, hidden: int) -> list[str]:
    """Two MLP checkpoints (784-hidden-10, seeds 0 and 1, untrained) for mnist5k under ``root``."""
    from weightgeo.models import build_model
    from weightgeo.models.checkpoint import save_checkpoint

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("mlp", hidden=[hidden])
        config = {"input_size": 784, "hidden": [hidden], "num_classes": 10}
        paths.append(str(save_checkpoint(root / f"m{seed}.pt", model, "mlp", config, "mnist5k", None)))
    return paths
