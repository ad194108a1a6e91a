"""Model registry and architectures."""

from __future__ import annotations

import json

import pytest
import torch

from weightgeo.errors import WeightgeoError
from weightgeo.models import MODEL_NAMES, FashionCNN, build_model, default_config

# Small configs that keep each forward pass cheap, and the input shape each model takes.
CASES = {
    "mlp": ({}, (1, 28, 28)),
    "fashion-cnn": ({}, (1, 28, 28)),
    "vgg11": ({"width": 0.125}, (3, 32, 32)),
    "vgg16": ({"width": 0.125, "num_classes": 100}, (3, 32, 32)),
    "small-cnn": ({}, (1, 28, 28)),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_model_has_a_case() -> None:
    assert set(CASES) == set(MODEL_NAMES)


def test_default_mlp_is_lenet_300_100() -> None:
    assert n_params(build_model("mlp")) == 266_610


def test_small_cnn_is_small() -> None:
    assert 1_000 < n_params(build_model("small-cnn")) < 10_000


def test_full_size_vgg_parameter_counts() -> None:
    # 3×3 convs with BN, three-layer 512-wide classifier, 10 classes (Garipov et al.).
    assert n_params(build_model("vgg11")) == 9_756_426
    assert n_params(build_model("vgg16")) == 15_253_578


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_gives_one_logit_per_class(name: str) -> None:
    overrides, shape = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    num_classes = default_config(name, **overrides)["num_classes"]
    with torch.no_grad():
        out = model(torch.randn(5, *shape))
    assert out.shape == (5, num_classes)
    assert torch.isfinite(out).all()


def test_mlp_accepts_flat_and_image_inputs() -> None:
    model = build_model("mlp")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model(x), model(x.view(3, 784)))


def test_mlp_custom_hidden_layers() -> None:
    model = build_model("mlp", input_size=20, hidden=(8,), num_classes=3)
    assert n_params(model) == 20 * 8 + 8 + 8 * 3 + 3
    assert model(torch.randn(2, 20)).shape == (2, 3)


def test_fashion_cnn_flattens_to_2304() -> None:
    model = build_model("fashion-cnn")
    assert isinstance(model, FashionCNN)
    assert model.features(torch.randn(2, 1, 28, 28)).flatten(1).shape == (2, 2304)
    assert model.classifier[0].in_features == 2304
    assert default_config("fashion-cnn")["num_classes"] == 20


def test_small_cnn_on_cifar_shaped_input() -> None:
    model = build_model("small-cnn", in_channels=3, image_size=32, batch_norm=True).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_without_batch_norm_has_no_bn_layers() -> None:
    model = build_model("vgg11", batch_norm=False, width=0.125)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_config_round_trips_through_json(name: str) -> None:
    config = default_config(name)
    assert json.loads(json.dumps(config)) == config
    assert n_params(build_model(name, **json.loads(json.dumps(config)))) == n_params(
        build_model(name)
    )


def test_default_config_applies_and_normalises_overrides() -> None:
    config = default_config("mlp", hidden=(64, 32))
    assert config == {"input_size": 784, "hidden": [64, 32], "num_classes": 10}
    assert default_config("vgg16", width=1)["width"] == 1.0
    # The defaults are not shared between calls.
    default_config("mlp")["hidden"].append(5)
    assert default_config("mlp")["hidden"] == [300, 100]


def test_unknown_model_name_lists_the_choices() -> None:
    with pytest.raises(WeightgeoError, match="unknown model 'resnet18'.*mlp.*vgg16"):
        build_model("resnet18")
    with pytest.raises(WeightgeoError, match="unknown model"):
        default_config("nope")


def test_unknown_config_key_lists_the_options() -> None:
    with pytest.raises(WeightgeoError, match="no option 'depth'.*num_classes, batch_norm, width"):
        build_model("vgg11", depth=19)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("mlp", {"num_classes": 0}),
        ("mlp", {"hidden": "300"}),
        ("mlp", {"hidden": [300, -1]}),
        ("vgg11", {"batch_norm": "yes"}),
        ("vgg11", {"width": 0}),
        ("small-cnn", {"in_channels": 2.5}),
    ],
)
def test_bad_config_values_are_refused(name: str, overrides: dict) -> None:
    with pytest.raises(WeightgeoError, match=f"model {name}: "):
        build_model(name, **overrides)


def test_error_messages_are_one_line() -> None:
    for call in (lambda: build_model("x"), lambda: build_model("mlp", foo=1)):
        with pytest.raises(WeightgeoError) as info:
            call()
        assert "\n" not in str(info.value)
