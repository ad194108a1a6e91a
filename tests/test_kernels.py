"""Transforms on networks whose kernels lack derivatives: the routes around them, the output
selector, and one clear error where a user's operation really has no derivative."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.autograd.functional import jacobian

from tests.model_zoo import ZOO, DictOutput
from weightgeo import FisherMetric, FunctionalModel, OutputMetric, WeightSpace
from weightgeo.errors import WeightgeoError
from weightgeo.kernels import higher_derivatives
from weightgeo.metrics import DiagonalFisher, Metric, MetricOperator


def rel(a: Tensor, b: Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def second_directional(f, theta: Tensor, v: Tensor, h: float = 1e-2) -> Tensor:
    """d²f[v, v] by central differences with one Richardson step (error O(h⁴))."""
    def central(step):
        return (f(theta + step * v) - 2 * f(theta) + f(theta - step * v)) / step**2
    return (4 * central(h / 2) - central(h)) / 3


@pytest.mark.parametrize("name", ["transformer", "norms", "vit"])
def test_geodesic_force_on_normalised_networks_matches_finite_differences(name):
    """F = (1/B) Jᵀ d²f[v, v] for the output metric. PyTorch's fused layer/instance norm give
    d²f[v, v] 10–100 % off under jvp of jvp; the elementary forms are exact."""
    _, fmodel, theta, x = ZOO[name].make()
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(5), dtype=theta.dtype)
    v = v / torch.linalg.vector_norm(v)
    J = jacobian(lambda t: fmodel(t, x), theta)  # B × C × n
    d2 = second_directional(lambda t: fmodel(t, x), theta, v)
    expected = torch.einsum("bcn,bc->n", J, d2) / x.shape[0]
    force, speed_sq, _ = OutputMetric(fmodel, x).at(theta).geodesic_force(v)
    assert rel(force, expected) < 1e-6
    jv = torch.einsum("bcn,n->bc", J, v)
    assert float(speed_sq) == pytest.approx(float(jv.square().sum() / x.shape[0]), rel=1e-10)


class RawOutputMetric(Metric):
    """A user's metric written only with torch.func: G v = (1/B) Jᵀ J v by jvp then vjp."""

    def __init__(self, fmodel: FunctionalModel, x: Tensor) -> None:
        self.fmodel, self.x = fmodel, x

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        def f(t):
            return self.fmodel(t, self.x)
        jv = torch.func.jvp(f, (theta,), (v,))[1]
        return torch.func.vjp(f, theta)[1](jv)[0] / self.x.shape[0]


@pytest.mark.parametrize("name", ["transformer", "norms"])
def test_a_user_metric_gets_the_exact_force_from_derivatives_of_its_products(name):
    """The generic force (jvp and grad of the user's mvp) equals the closed form on networks
    with attention and normalisation: the user's transforms run on the routed kernels too."""
    _, fmodel, theta, x = ZOO[name].make()
    v = 0.1 * torch.randn(theta.numel(), generator=torch.Generator().manual_seed(2), dtype=theta.dtype)
    closed, speed_closed, _ = OutputMetric(fmodel, x).at(theta).geodesic_force(v)
    generic, speed_generic, _ = MetricOperator(RawOutputMetric(fmodel, x), theta).geodesic_force(v)
    assert rel(generic, closed) < 1e-9
    assert float(speed_generic) == pytest.approx(float(speed_closed), rel=1e-10)


def test_the_routes_are_left_after_each_transform():
    """Products change no global setting: plain forward and backward keep the fused kernels."""
    _, fmodel, theta, x = ZOO["transformer"].make()
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
              torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.mha.get_fastpath_enabled(),
              torch.backends.cudnn.enabled)
    metric = OutputMetric(fmodel, x)
    metric.mvp(theta, torch.ones_like(theta))
    metric.at(theta).geodesic_force(torch.ones_like(theta))
    assert torch.backends.cuda.flash_sdp_enabled() and not torch.overrides._is_torch_function_mode_enabled()
    with higher_derivatives():
        assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.mha.get_fastpath_enabled()
    after = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.mha.get_fastpath_enabled(),
             torch.backends.cudnn.enabled)
    assert after == before


# -- the output selector ----------------------------------------------------------------------
def test_a_model_without_a_tensor_output_needs_a_selector():
    torch.manual_seed(0)
    model = DictOutput().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(WeightgeoError, match=r"returns a dict, not a tensor of logits: .*output="):
        OutputMetric(model, x).mvp(FunctionalModel(model).theta(), torch.ones(57, dtype=torch.float64))
    with pytest.raises(WeightgeoError, match="has no such key, attribute or index"):
        FunctionalModel(model, output="scores")(FunctionalModel(model).theta(), x)
    with pytest.raises(WeightgeoError, match="picks a str"):
        FunctionalModel(model, output=lambda out: "logits")(FunctionalModel(model).theta(), x)


def test_the_selector_reaches_every_evaluation():
    """Products, the stacked model of relax's energy and train-mode calls all pick the logits."""
    model, fmodel, theta, x = ZOO["dict-output"].make()
    logits = model(x)["logits"].detach()
    assert torch.equal(fmodel(theta, x), logits)
    assert torch.allclose(fmodel.stacked()(torch.stack([theta, theta]), x)[1], logits)
    assert torch.allclose(fmodel.train_call(theta, x, fmodel.clone_buffers()), logits)
    assert FunctionalModel(fmodel).output == "logits"  # sharing keeps the selector
    assert FunctionalModel(fmodel, output="features")(theta, x).shape == (x.shape[0], 6)
    energies = WeightSpace(fmodel, OutputMetric(fmodel, x)).segment_energies(torch.stack([theta, 1.1 * theta]))
    expected = (fmodel(1.1 * theta, x) - logits).square().sum(-1).mean()
    assert float(energies[0]) == pytest.approx(float(expected), rel=1e-12)


# -- operations without derivatives -----------------------------------------------------------
class Square(torch.autograd.Function):
    """x², differentiable backward, no jvp: forward mode is missing, second order is not."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class OnceSquare(Square):
    """The same with @once_differentiable: torch.func differentiates its backward as a constant."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class OldStyleSquare(torch.autograd.Function):
    """The pre-torch.func form (ctx in forward): unusable by torch.func transforms."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class WithFunction(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function, self.first, self.last = function, nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.last(self.function.apply(self.first(x)))


def _case(function):
    torch.manual_seed(0)
    model = WithFunction(function).double()
    fmodel = FunctionalModel(model)
    return fmodel, fmodel.theta(), torch.randn(6, 4, dtype=torch.float64)


def test_an_operation_without_forward_mode_takes_the_linearisation():
    fmodel, theta, x = _case(Square)
    J = jacobian(lambda t: fmodel(t, x), theta)
    G = torch.einsum("bcn,bcm->nm", J, J) / x.shape[0]
    v = torch.randn_like(theta)
    assert rel(OutputMetric(fmodel, x).mvp(theta, v), G @ v) < 1e-10
    with pytest.raises(WeightgeoError, match=r"geodesic force .* forward-mode .* test_kernels\.Square .* jvp"):
        OutputMetric(fmodel, x).at(theta).geodesic_force(v)


def test_a_backward_differentiated_as_a_constant_is_caught():
    fmodel, theta, x = _case(OnceSquare)
    with pytest.raises(WeightgeoError, match="second derivatives disagree with its first.*once_differentiable"):
        FisherMetric(fmodel, x).at(theta) @ torch.randn_like(theta)
    assert DiagonalFisher(fmodel, x).diagonal(theta).shape == theta.shape  # first order is fine


def test_an_old_style_function_is_named():
    fmodel, theta, x = _case(OldStyleSquare)
    with pytest.raises(WeightgeoError, match=r"OutputMetric's products need torch.func support .*"
                                             r"in forward: return self.last\(self.function.apply.*setup_context"):
        OutputMetric(fmodel, x).at(theta)


def test_bags_of_embeddings_by_offsets_are_one_clear_error():
    """nn.EmbeddingBag on a B × L batch runs in elementary operations; bags given by offsets
    keep PyTorch's kernel, which has no second derivative: one line naming it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.EmbeddingBag(10, 4, mode="mean"), nn.Linear(4, 3)).double()
    fmodel = FunctionalModel(model)
    theta, x = fmodel.theta(), torch.randint(0, 10, (3, 4))
    J = jacobian(lambda t: fmodel(t, x), theta)
    G = torch.einsum("bcn,bcm->nm", J, J) / x.shape[0]
    v = torch.randn_like(theta)
    assert rel(OutputMetric(fmodel, x).mvp(theta, v), G @ v) < 1e-10
    assert rel(OutputMetric(fmodel, x).at(theta) @ v, G @ v) < 1e-10

    class Offsets(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag, self.head = nn.EmbeddingBag(10, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.bag(x.flatten(), torch.arange(0, x.numel(), x.shape[1])))

    with pytest.raises(WeightgeoError, match=r"second derivatives .* aten::_embedding_bag_backward "
                                             r".*diag-fisher"):
        OutputMetric(Offsets().double(), x).at(theta) @ v


@pytest.mark.parametrize("rnn", [nn.LSTM, nn.GRU, nn.RNN])
def test_packed_recurrent_layers_in_elementary_cells_equal_the_fused_kernel(rnn):
    """Packed sequences (torch.func cannot transform the fused packed kernel) run as a loop of
    cells inside the route: the same outputs and final states, both directions, two layers."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    layer = rnn(3, 4, num_layers=2, bidirectional=True, batch_first=True).double().eval()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor([3, 5, 1, 4]), batch_first=True, enforce_sorted=False)
    expected = layer(packed)
    with higher_derivatives():
        got = layer(packed)
    assert torch.allclose(got[0].data, expected[0].data, rtol=0, atol=1e-13)
    for g, e in zip(got[1] if rnn is nn.LSTM else [got[1]], expected[1] if rnn is nn.LSTM else [expected[1]],
                    strict=True):
        assert torch.allclose(g, e, rtol=0, atol=1e-13)
