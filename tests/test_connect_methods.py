"""connect's methods and evaluation, each checked for what it claims on tiny models.

Batch-norm statistics against the layer's own batch moments, barriers on hand-made rows,
arc-length sampling with a known answer, Garipov's curve training (the bend moves, the loss
at the midpoint falls, weight decay acts on w(t)), traverse's final segment, relax against the
straight line, rebasin's function, and one end-to-end number on real mnist5k digits.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightgeo.applications.connect import (
    Bezier,
    ConnectSettings,
    ConnectTask,
    PointEvaluator,
    Polyline,
    connect_networks,
    run_method,
    summarise,
)
from weightgeo.data import Data
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel


def _mlp(seed: int, batch_norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(8)] if batch_norm else []
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), *norm, nn.ReLU(), nn.Linear(8, 5), nn.ReLU(),
                         nn.Linear(5, 3))


def _data(n: int = 64, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 3, generator=g)  # Data holds images: N×C×H×W
    flat = x.flatten(1)
    y = (flat[:, 0] > 0).long() + (flat[:, 1] > 0).long()
    return Data(x, y, 3, "toy")


def _setting(metric: str = "output", batch_norm: bool = False, **kw) -> ConnectTask:
    fm = FunctionalModel(_mlp(0, batch_norm))
    train = _data()
    kw.setdefault("step_size", None)  # 1% of ||θ_b − θ_a|| (the Python default before the port)
    return ConnectTask(fm, fm.theta(), FunctionalModel(_mlp(1, batch_norm)).theta(), train, _data(32, 1),
                       ConnectSettings(metric=metric, **kw), metric_inputs=train.x[:16])


# -- batch-norm statistics ---------------------------------------------------------------------
def _bn_case():
    fm = FunctionalModel(_mlp(0, batch_norm=True))
    theta_b = FunctionalModel(_mlp(1, batch_norm=True)).theta()
    return fm, 0.5 * (fm.theta() + theta_b), _data(64, 0), _data(32, 1)


def _first_layer(fm: FunctionalModel, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    p = fm.unflatten(theta)
    return x.flatten(1) @ p["1.weight"].T + p["1.bias"]


def _hand_scores(fm, theta, data, mean, var):
    """Test loss and accuracy of θ with batch norm normalising by (mean, var), by hand."""
    p = fm.unflatten(theta)
    h = (_first_layer(fm, theta, data.x) - mean) / (var + 1e-5).sqrt() * p["2.weight"] + p["2.bias"]
    h = F.relu(F.relu(h) @ p["4.weight"].T + p["4.bias"])
    logits = h @ p["6.weight"].T + p["6.bias"]
    return float(F.cross_entropy(logits, data.y)), float((logits.argmax(-1) == data.y).float().mean())


@pytest.mark.parametrize("batch_size", [1000, 16])
def test_recomputed_statistics_are_the_moments_of_the_layer_inputs(batch_size):
    fm, theta, train, test = _bn_case()
    buffers = PointEvaluator(fm, train, test, batch_size=batch_size).buffers(theta)
    h = _first_layer(fm, theta, train.x)
    # a cumulative average over equal batches: the mean of the batch means and of the
    # batches' unbiased variances (one batch: the moments of the whole training set)
    chunks = h.split(batch_size)
    torch.testing.assert_close(buffers["2.running_mean"], h.mean(0), atol=1e-6, rtol=1e-5)
    expected_var = torch.stack([c.var(0) for c in chunks]).mean(0)
    torch.testing.assert_close(buffers["2.running_var"], expected_var, atol=1e-6, rtol=1e-5)
    assert int(buffers["2.num_batches_tracked"]) == len(chunks)
    assert torch.equal(fm.buffers["2.running_mean"], torch.zeros(8))  # the model's own: untouched


def test_statistics_and_training_scores_on_the_chosen_number_of_training_images():
    """--bn-images 16 and --train-eval-images 24 of 64: the statistics are the moments of the layer
    inputs of a seeded subset of 16 images, the training scores those of a subset of 24."""
    fm, theta, train, test = _bn_case()
    evaluator = PointEvaluator(fm, train, test, bn_images=16, train_eval_images=24, seed=3)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    h = _first_layer(fm, theta, train.x[order[:16]])
    buffers = evaluator.buffers(theta)
    torch.testing.assert_close(buffers["2.running_mean"], h.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(buffers["2.running_var"], h.var(0), atol=1e-6, rtol=1e-5)
    scores = evaluator(theta)
    subset = Data(train.x[order[:24]], train.y[order[:24]], 3, "subset")
    loss, accuracy = _hand_scores(fm, theta, subset, h.mean(0), h.var(0))
    assert scores["train_loss"] == pytest.approx(loss, rel=1e-5)
    assert scores["train_accuracy"] == pytest.approx(accuracy)
    assert scores["test_loss"] == pytest.approx(_hand_scores(fm, theta, test, h.mean(0), h.var(0))[0], rel=1e-5)
    whole = PointEvaluator(fm, train, test, bn_images=0, train_eval_images=0).buffers(theta)
    h_all = _first_layer(fm, theta, train.x)
    torch.testing.assert_close(whole["2.running_mean"], h_all.mean(0), atol=1e-6, rtol=1e-5)  # 0: all of it


def test_several_points_per_pass_give_the_scores_of_one_point_at_a_time():
    s = _setting()
    points = s.theta_a + torch.linspace(0, 1, 5)[:, None] * (s.theta_b - s.theta_a)
    one = PointEvaluator(s.model, s.train, s.test).evaluate(points)
    many = PointEvaluator(s.model, s.train, s.test, points_per_pass=3, batch_size=20).evaluate(points)
    assert [r["point"] for r in many] == list(range(5))
    for a, b in zip(one, many, strict=True):
        assert b == pytest.approx(a, rel=1e-5)
    for k, theta in enumerate(points):  # and they are the network's loss at each point
        logits = s.model(theta, s.test.x)
        assert many[k]["test_loss"] == pytest.approx(float(F.cross_entropy(logits, s.test.y)), rel=1e-5)
        assert many[k]["train_accuracy"] == pytest.approx(
            float((s.model(theta, s.train.x).argmax(-1) == s.train.y).float().mean()))
    assert len({r["test_loss"] for r in many}) == 5


def test_recomputing_statistics_changes_the_evaluation_at_an_interpolated_point():
    fm, theta, train, test = _bn_case()
    recomputed = PointEvaluator(fm, train, test, train_eval=False)(theta)
    stored = PointEvaluator(fm, train, test, bn_recompute=False, train_eval=False)(theta)
    h = _first_layer(fm, theta, train.x)
    loss, accuracy = _hand_scores(fm, theta, test, h.mean(0), h.var(0))
    assert recomputed["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert recomputed["test_accuracy"] == pytest.approx(accuracy)
    zeros, ones = torch.zeros(8), torch.ones(8)  # the stored statistics of a fresh BatchNorm1d
    loss_stored, _ = _hand_scores(fm, theta, test, zeros, ones)
    assert stored["test_loss"] == pytest.approx(loss_stored, rel=1e-5)
    assert abs(recomputed["test_loss"] - stored["test_loss"]) > 1e-2


@pytest.mark.parametrize("recompute_bn", [True, False])
def test_connect_evaluates_batch_norm_networks_as_asked(recompute_bn):
    fm, _, train, test = _bn_case()
    theta_a, theta_b = fm.theta(), FunctionalModel(_mlp(1, batch_norm=True)).theta()
    result = connect_networks(fm, theta_a, theta_b, train, test, None, method=["linear"], points=3,
                              plane_grid=0, train_eval=False, bn_recompute=recompute_bn)
    for row, t in zip(result.evaluations["linear"], (0.0, 0.5, 1.0), strict=True):
        theta = theta_a + t * (theta_b - theta_a)
        h = _first_layer(fm, theta, train.x)
        stats = (h.mean(0), h.var(0)) if recompute_bn else (torch.zeros(8), torch.ones(8))
        assert row["test_loss"] == pytest.approx(_hand_scores(fm, theta, test, *stats)[0], rel=1e-5)


# -- summaries and curves ---------------------------------------------------------------------
def test_summarise_on_hand_made_rows():
    rows = [
        {"test_loss": 0.3, "test_accuracy": 0.90, "train_loss": 0.1, "train_accuracy": 0.99},
        {"test_loss": 0.9, "test_accuracy": 0.70, "train_loss": 0.8, "train_accuracy": 0.75},
        {"test_loss": 0.7, "test_accuracy": 0.60, "train_loss": 0.6, "train_accuracy": 0.80},
        {"test_loss": 0.5, "test_accuracy": 0.80, "train_loss": 0.2, "train_accuracy": 0.97},
    ]
    s = summarise(rows)
    assert s["start_test_accuracy"] == pytest.approx(90.0)
    assert s["end_test_accuracy"] == pytest.approx(80.0)
    assert s["min_test_accuracy"] == pytest.approx(60.0)
    assert s["max_accuracy_drop"] == pytest.approx(80.0 - 60.0)  # from the worse endpoint
    assert s["loss_barrier"] == pytest.approx(0.9 - 0.4)
    assert s["max_test_loss"] == pytest.approx(0.9)
    assert s["error_barrier"] == pytest.approx(40.0 - 15.0)  # max error − mean endpoint error
    assert s["train_loss_barrier"] == pytest.approx(0.8 - 0.15)
    assert s["min_train_accuracy"] == pytest.approx(75.0)
    # a path better than its endpoints: no drop, negative barriers
    better = summarise([{"test_loss": 0.5, "test_accuracy": 0.8}, {"test_loss": 0.2, "test_accuracy": 0.9},
                        {"test_loss": 0.4, "test_accuracy": 0.7}])
    assert better["max_accuracy_drop"] == 0.0
    assert better["loss_barrier"] == pytest.approx(0.5 - 0.45)
    assert better["error_barrier"] == pytest.approx(30.0 - 25.0)
    flat = summarise([{"test_loss": 0.5, "test_accuracy": 0.8}] * 2 + [{"test_loss": 0.3, "test_accuracy": 0.9}])
    assert flat["loss_barrier"] == pytest.approx(0.5 - 0.4)
    assert "train_loss_barrier" not in flat


def test_bezier_samples_are_evenly_spaced_along_a_collinear_curve():
    """Bend at a + d/4: w(t) = a + d(t + t²)/2 runs along the segment at speed |d|(1/2 + t)."""
    a = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    d = torch.tensor([2.0, 4.0, -4.0], dtype=torch.float64)
    curve = Bezier(a, a + 0.25 * d, a + d, resolution=2000)
    pts, fractions = curve.sample(9)
    torch.testing.assert_close(pts, a + fractions[:, None] * d, atol=1e-6, rtol=0)
    torch.testing.assert_close(fractions, torch.linspace(0, 1, 9, dtype=torch.float64))
    assert curve.euclidean_length() == pytest.approx(6.0, rel=1e-9)
    torch.testing.assert_close(curve.at(0.5), a + 0.375 * d)


def test_polyline_samples_by_arc_length_across_vertices():
    vertices = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0], [0.0, 2.0]], dtype=torch.float64)
    line = Polyline(vertices)
    pts, _ = line.sample(9)  # total length 4: a point every 0.5
    expected = torch.tensor([[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [1, 1.5], [1, 2], [0.5, 2], [0, 2]],
                            dtype=torch.float64)
    torch.testing.assert_close(pts, expected)
    assert line.euclidean_length() == pytest.approx(4.0)


# -- Garipov's curves ----------------------------------------------------------------------------
def _midpoint_loss(s: ConnectTask, w: torch.Tensor) -> float:
    return float(F.cross_entropy(s.model(w, s.train.x), s.train.y))


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_training_moves_the_bend_and_lowers_the_midpoint_loss(kind):
    s = _setting(budget=300, weight_decay=0.0, curve_lr=0.05)
    result = run_method(kind, s)
    bend = result.curve.control_points()[1]
    mid = 0.5 * (s.theta_a + s.theta_b)
    assert float((bend - mid).norm()) > 0.1
    curve_mid = bend if kind == "polychain" else result.curve.at(0.5)  # w(1/2)
    assert _midpoint_loss(s, curve_mid) < 0.8 * _midpoint_loss(s, mid)
    assert result.grad_evals == 300
    torch.testing.assert_close(result.curve.start, s.theta_a)
    torch.testing.assert_close(result.curve.end, s.theta_b)


@pytest.mark.parametrize(("kind", "minimiser"), [("bezier", -0.75), ("polychain", -0.25)])
def test_curve_weight_decay_acts_on_the_point_of_the_curve(kind, minimiser):
    """With a dominant weight decay the bend minimises E_t ½||w(t)||²: bend = c(θ_a + θ_b) with
    c = −3/4 (Bezier: E[2t(1−t) w(t)] = 0) or −1/4 (polychain); decay on the bend itself gives 0.
    SGD on random t reaches c up to its noise, so c is read off along θ_a + θ_b."""
    s = _setting(budget=600, weight_decay=100.0, curve_lr=0.005)
    bend = run_method(kind, s).curve.control_points()[1]
    both = s.theta_a + s.theta_b
    assert float(bend @ both / (both @ both)) == pytest.approx(minimiser, abs=0.12)


# -- traverse, relax and rebasin as connection methods ---------------------------------------------
def _output_distance(s: ConnectTask, p: torch.Tensor, q: torch.Tensor) -> float:
    """√(mean_x ||f(x; q) − f(x; p)||²) on the metric's inputs: the output metric's distance."""
    x = s.metric_inputs
    return float((s.model(q, x) - s.model(p, x)).square().sum(-1).mean().sqrt())


def test_traverse_records_its_final_segment_to_theta_b():
    s = _setting("output", traverse_weight=1.0, budget=60, cg_iters=3, tol=1e-6)
    result = run_method("traverse", s)
    before = result.curve.vertices[-2]  # where the walk stopped
    final = result.path.records[-1]
    distance = float((s.theta_b - s.theta_a).norm())
    remaining = float((s.theta_b - before).norm())
    assert final["final_segment"] is True
    assert final["euclidean_length"] == pytest.approx(remaining, rel=1e-5)
    assert final["metric_length"] == pytest.approx(_output_distance(s, before, s.theta_b), rel=1e-4)
    assert result.info["final_segment_fraction"] == pytest.approx(remaining / distance, rel=1e-5)
    assert 0 < remaining < distance  # the walk went part of the way, toward θ_b
    # the budget was spent: a step costs 3 CG products and the task term (+ the term at the last point)
    assert 60 - 2 * 4 < result.grad_evals <= 60


def test_traverse_weight_bends_the_walk():
    ends = []
    for weight in (0.0, 1.0, 3.0):
        s = _setting("output", traverse_weight=weight, budget=40, cg_iters=3, tol=1e-6, traverse_task="labels")
        ends.append(run_method("traverse", s).curve.vertices[-2])
    assert float((ends[0] - ends[1]).norm()) > 1e-2
    assert float((ends[1] - ends[2]).norm()) > 1e-3  # the weight itself is used, not only its sign


def test_relax_method_shortens_the_path_under_its_metric():
    s = _setting("output", task_weight=0.0, budget=400, nodes=3, relax_lr=0.01)
    relaxed = run_method("relax", s).curve.vertices
    line = s.theta_a + torch.linspace(0, 1, 5)[:, None] * (s.theta_b - s.theta_a)

    def length(vertices):
        return sum(_output_distance(s, p, q) for p, q in zip(vertices[:-1], vertices[1:], strict=True))

    assert length(relaxed) < 0.97 * length(line)  # the relaxed length is ≈ 0.95 of the line's
    torch.testing.assert_close(relaxed[0], s.theta_a)
    torch.testing.assert_close(relaxed[-1], s.theta_b)


@pytest.mark.parametrize(("objective", "weight"), [("energy", 20.0), ("image", 200.0)])
def test_relax_method_task_weight_lowers_the_loss_at_its_nodes(objective, weight):
    # The weight is relative to the straight line's energy or image misfit, which differ: the line is
    # nearer its image (a small divisor), so the image objective needs a larger weight for the same pull.
    def node_losses(task_weight):
        s = _setting("output", task_weight=task_weight, budget=400, nodes=3, relax_lr=0.01,
                     relax_objective=objective)
        nodes = run_method("relax", s).curve.vertices[1:-1]
        return [float(F.cross_entropy(s.model(w, s.train.x), s.train.y)) for w in nodes]

    energy_only, with_task = node_losses(0.0), node_losses(weight)
    assert max(with_task) < 0.85 * min(energy_only)


def test_relax_method_image_objective_moves_the_nodes_outputs_onto_the_logit_segment():
    # --relax-objective image: each node's logits fitted to (1 − t_k) f_a + t_k f_b, so the misfit on the
    # training inputs falls well below the straight line's; the other relax settings reach the tracer too.
    s = _setting("output", task_weight=0.0, budget=800, nodes=3, relax_lr=0.01, relax_objective="image",
                 relax_damping=1e-4, relax_optimizer="adam")
    result = run_method("relax", s)
    t = torch.linspace(0, 1, 5)[1:-1]
    f_a, f_b = s.model(s.theta_a, s.train.x), s.model(s.theta_b, s.train.x)

    def misfit(nodes):
        return sum(float((s.model(w, s.train.x) - ((1 - tk) * f_a + tk * f_b)).square().sum(-1).mean())
                   for w, tk in zip(nodes, t, strict=True))

    line = s.theta_a + t[:, None] * (s.theta_b - s.theta_a)
    assert misfit(result.curve.vertices[1:-1]) < 0.5 * misfit(line)
    assert (result.path.meta["objective"], result.path.meta["damping"], result.path.meta["optimizer"]) == (
        "image", 1e-4, "adam")


def test_connect_reports_each_path_length_under_its_metric():
    """metric_length is the sum of the metric distances between consecutive evaluated points."""
    s = _setting()
    train, test = s.train, s.test
    euclid = connect_networks(s.model, s.theta_a, s.theta_b, train, test, None, method=["linear", "polychain"],
                              points=5, plane_grid=0, train_eval=False, metric="euclidean", budget=50)
    polychain = euclid.curves["polychain"]
    pts, _ = polychain.sample(5)
    chords = float((pts[1:] - pts[:-1]).norm(dim=-1).sum())
    line, bent = euclid.rows
    assert bent["metric_length"] == pytest.approx(chords, rel=1e-5)
    assert bent["metric_length"] > 1.01 * float((s.theta_b - s.theta_a).norm())  # the bend counts
    assert line["metric_length"] == pytest.approx(float((s.theta_b - s.theta_a).norm()), rel=1e-5)
    # the output metric on every training input (metric_batch covers the training set)
    output = connect_networks(s.model, s.theta_a, s.theta_b, train, test, None, method=["linear"], points=5,
                              plane_grid=0, train_eval=False, metric="output", metric_batch=len(train.x))
    line_pts = s.theta_a + torch.linspace(0, 1, 5)[:, None] * (s.theta_b - s.theta_a)
    s_all = ConnectTask(s.model, s.theta_a, s.theta_b, train, test, ConnectSettings(), metric_inputs=train.x)
    by_hand = sum(_output_distance(s_all, p, q) for p, q in zip(line_pts[:-1], line_pts[1:], strict=True))
    assert output.rows[0]["metric_length"] == pytest.approx(by_hand, rel=1e-5)


def test_rebasin_method_ends_at_the_same_function_as_theta_b():
    s = _setting("euclidean")
    result = run_method("rebasin", s)
    x = _data(20, 5).x
    torch.testing.assert_close(s.model(result.curve.end, x), s.model(s.theta_b, x), atol=1e-5, rtol=1e-5)
    distance = float((s.theta_b - s.theta_a).norm())
    assert result.info["distance_after"] == pytest.approx(float((result.curve.end - s.theta_a).norm()))
    assert result.info["distance_after"] < distance
    assert result.info["units_permuted"] > 0


# -- one number on real data -------------------------------------------------------------------------
def test_relax_keeps_accuracy_where_the_straight_line_loses_it_on_mnist5k(mnist5k_mlps):
    """Two MLPs trained from different seeds: the straight line between them crosses a loss barrier;
    relax (output-metric energy plus the task loss at 4 nodes, 300 gradient evaluations) does not."""
    from weightgeo.data import load_dataset

    a, b = mnist5k_mlps["a"], mnist5k_mlps["b"]
    fm = FunctionalModel(a["model"])
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    rows = connect_networks(fm, a["theta"], b["theta"], train, test, None, method=["linear", "relax"],
                            points=11, plane_grid=0, train_eval=False, budget=300, nodes=4).rows
    linear, relaxed = rows
    worse_end = 100 * min(a["test_accuracy"], b["test_accuracy"])
    assert linear["min_test_accuracy"] < worse_end - 3 and linear["loss_barrier"] > 0.2
    assert relaxed["min_test_accuracy"] > linear["min_test_accuracy"] + 2
    assert relaxed["loss_barrier"] < 0.5 * linear["loss_barrier"]
    assert relaxed["grad_evals"] <= 300


def test_curve_training_gradients_of_bezier_and_polychain_at_the_straight_line():
    """A bend at the midpoint makes both curves the straight line w(t) = (1−t)θ_a + tθ_b; the
    expected gradient of ½λ||w(t)||² in the bend is then λ E[∂w/∂bend · w] = λ(θ_a + θ_b)·k with
    k = E[2t(1−t)·…] = 1/6 (Bezier) and 1/4 (polychain). With a tiny learning rate the bend drifts
    by the same schedule times that gradient: the drifts along θ_a + θ_b are in ratio 3/2."""
    drift = {}
    for kind in ("bezier", "polychain"):
        s = _setting(budget=300, weight_decay=1000.0, curve_lr=1e-8)
        bend = run_method(kind, s).curve.control_points()[1]
        both = s.theta_a + s.theta_b
        drift[kind] = float((0.5 * both - bend) @ both / (both @ both))
    assert drift["bezier"] > 0
    assert drift["polychain"] / drift["bezier"] == pytest.approx(1.5, abs=0.1)


@pytest.mark.parametrize("vertices", [torch.zeros(3), torch.zeros(1, 4)])  # not a 2-d stack; one vertex
def test_a_polyline_refuses_fewer_than_two_vertices_or_a_flat_tensor(vertices):
    with pytest.raises(WeightgeoError, match="at least two vertices"):
        Polyline(vertices)
