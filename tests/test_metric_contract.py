"""The metric contract on every model of the zoo, against dense float64 Jacobians.

For each architecture family (tests/model_zoo.py) and each metric built on the network, the
products ``mvp`` and ``at(θ) @ v``, the damped solve and the diagonal agree with dense
references built from ``torch.autograd.functional.jacobian`` — an autograd loop on the
default (fused) kernels, independent of the transforms the metrics use — to a relative error
under 1e-8.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from tests.model_zoo import ZOO
from weightgeo import DiagonalFisher, FisherMetric, OutputMetric

TOLERANCE = 1e-8
DAMPING = 0.1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture(scope="module", params=sorted(ZOO))
def case(request):
    """(name, FunctionalModel, θ, x, dense references) for one model of the zoo."""
    _, fmodel, theta, x = ZOO[request.param].make()
    J = jacobian(lambda t: fmodel(t, x), theta)  # B × C × n
    logits = fmodel(theta, x)
    p = logits.softmax(-1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    batch = x.shape[0]
    references = {
        "output": torch.einsum("bcn,bcm->nm", J, J) / batch,
        "fisher": torch.einsum("bcn,bcd,bdm->nm", J, H, J) / batch,
    }
    assert float(references["output"].diagonal().min()) >= 0
    return request.param, fmodel, theta, x, references


@pytest.mark.parametrize("name, metric_cls", [("output", OutputMetric), ("fisher", FisherMetric)])
def test_pullback_metrics_match_dense_jacobians(case, name, metric_cls):
    model_name, fmodel, theta, x, references = case
    G = references[name]
    assert float(torch.linalg.matrix_norm(G)) > 1e-6, f"{model_name}: a degenerate reference"
    metric = metric_cls(fmodel, x)
    generator = torch.Generator().manual_seed(3)
    V = torch.randn(theta.numel(), 2, generator=generator, dtype=theta.dtype)
    assert rel(metric.mvp(theta, V[:, 0]), G @ V[:, 0]) < TOLERANCE
    operator = metric.at(theta)
    assert rel(operator @ V[:, 1], G @ V[:, 1]) < TOLERANCE
    assert rel(operator @ V, G @ V) < TOLERANCE
    g = torch.randn(theta.numel(), generator=generator, dtype=theta.dtype)
    # G has rank ≤ B·C, so CG on G + μI converges in about B·C + 1 iterations
    solution = operator.solve(g, damping=DAMPING, maxiter=80, tol=1e-14)
    expected = torch.linalg.solve(G + DAMPING * torch.eye(len(theta), dtype=G.dtype), g)
    assert rel(solution.x, expected) < TOLERANCE


def test_diagonal_fisher_matches_the_dense_diagonal(case):
    _, fmodel, theta, x, references = case
    diagonal = torch.diagonal(references["fisher"])
    metric = DiagonalFisher(fmodel, x, chunk_size=2)
    assert rel(metric.diagonal(theta), diagonal) < TOLERANCE
    v = torch.randn_like(theta)
    assert rel(metric.mvp(theta, v), diagonal * v) < TOLERANCE
    assert rel(metric.at(theta) @ v, diagonal * v) < TOLERANCE
    assert rel(metric.solve(theta, v, damping=DAMPING).x, v / (diagonal + DAMPING)) < TOLERANCE
