"""Model registry and architectures, and which models fit which data (probe forward passes)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from weightgeo.cli import main
from weightgeo.data import Data, load_dataset
from weightgeo.data.testing import fake_cifar_checksums, write_fake_cifar
from weightgeo.errors import WeightgeoError
from weightgeo.models import (
    MODEL_NAMES,
    FashionCNN,
    build_model,
    check_model_fits,
    config_for_data,
    default_config,
    models_that_fit,
    save_checkpoint,
)
from weightgeo.workflows import load_with_data

# Small configs that keep each forward pass cheap, and the input shape each model takes.
CASES = {
    "mlp": ({}, (1, 28, 28)),
    "fashion-cnn": ({}, (1, 28, 28)),
    "vgg11": ({"width": 0.125}, (3, 32, 32)),
    "vgg16": ({"width": 0.125, "num_classes": 100}, (3, 32, 32)),
    "resnet18": ({"width": 0.125, "num_classes": 7}, (3, 32, 32)),
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
    with pytest.raises(WeightgeoError, match="unknown model 'resnet50'.*mlp.*vgg16.*resnet18"):
        build_model("resnet50")
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


# -- ResNet-18, the CIFAR variant -----------------------------------------------------------


def _torchvision_cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the stem made CIFAR's: a 3×3 stride-1 conv, no max pool."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net


def test_resnet18_is_torchvisions_with_the_cifar_stem() -> None:
    torch.manual_seed(0)
    reference = _torchvision_cifar_resnet18().eval()
    ours = build_model("resnet18").eval()
    assert n_params(ours) == n_params(reference) == 11_173_962
    # same tensors under the same names: torchvision's weights load, and give the same logits
    for module in reference.modules():  # non-trivial running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_resnet18_stages_see_32_16_8_4_pixels_and_have_no_max_pool() -> None:
    model = build_model("resnet18", width=0.125).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    sides = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda module, args, out, name=name: sides.__setitem__(name, tuple(out.shape[1:])))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    # width 1/8: 64-128-256-512 channels become 8-16-32-64
    assert sides == {"layer1": (8, 32, 32), "layer2": (16, 16, 16), "layer3": (32, 8, 8),
                     "layer4": (64, 4, 4)}
    assert model.fc.in_features == 64
    blocks = [len(getattr(model, f"layer{i}")) for i in range(1, 5)]
    assert blocks == [2, 2, 2, 2]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1 + 8 * 2 + 3


def test_resnet18_in_channels_and_any_image_side() -> None:
    model = build_model("resnet18", in_channels=1, width=0.125, num_classes=4).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(3, 1, 28, 28)).shape == (3, 4)


# -- models meet data -------------------------------------------------------------------------


def _data(shape: tuple[int, ...], classes: int = 10, n: int = 3) -> Data:
    y = torch.arange(n) % classes
    return Data(torch.randn(n, *shape), y, classes, f"fake{'x'.join(map(str, shape))}")


def test_config_for_data_takes_the_shape_keys_a_model_has() -> None:
    digits, cifar100 = _data((1, 28, 28)), _data((3, 32, 32), classes=100)
    assert config_for_data("mlp", digits)["input_size"] == 784
    assert config_for_data("mlp", cifar100) == {"input_size": 3072, "hidden": [300, 100],
                                                "num_classes": 100}
    assert config_for_data("resnet18", digits) == {"num_classes": 10, "in_channels": 1, "width": 1.0}
    assert config_for_data("small-cnn", cifar100)["in_channels"] == 3
    assert config_for_data("small-cnn", cifar100)["image_size"] == 32
    assert config_for_data("vgg11", cifar100) == {"num_classes": 100, "batch_norm": True, "width": 1.0}
    # what the caller sets wins
    assert config_for_data("resnet18", digits, {"width": 0.5, "num_classes": 3})["num_classes"] == 3


def test_models_that_fit_are_found_by_trying_and_leave_the_callers_draws_alone() -> None:
    digits, cifar100 = _data((1, 28, 28)), _data((3, 32, 32), classes=100)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    assert models_that_fit(digits) == ["mlp", "fashion-cnn", "resnet18", "small-cnn"]
    assert torch.equal(torch.rand(3), expected)  # building the candidates drew nothing of ours
    assert models_that_fit(cifar100) == ["mlp", "vgg11", "vgg16", "resnet18", "small-cnn"]
    # 3×16×16: the channels fit VGG, but five max pools leave nothing; the rest adapt
    assert models_that_fit(_data((3, 16, 16))) == ["mlp", "resnet18", "small-cnn"]


def test_a_model_that_does_not_fit_is_one_line_naming_both() -> None:
    data = _data((1, 28, 28))
    vgg = build_model("vgg11", width=0.125).eval()
    with pytest.raises(WeightgeoError) as info:
        check_model_fits("vgg11", vgg, data, what="mnist5k")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model vgg11 does not fit mnist5k (inputs 1×28×28, 10 classes)")
    assert message.endswith("models that fit: mlp, fashion-cnn, resnet18, small-cnn")
    # too few outputs for the classes
    small_head = build_model("mlp", hidden=[4], num_classes=3)
    with pytest.raises(WeightgeoError, match="it has 3 outputs for 10 classes"):
        check_model_fits("mlp", small_head, data)
    check_model_fits("mlp", build_model("mlp", hidden=[4], num_classes=12), data)  # more is fine
    # a forward that does not give one row of logits per input
    with pytest.raises(WeightgeoError, match=r"outputs of shape \(1, 28, 28\) per input"):
        check_model_fits("identity", lambda x: x, data)


def test_cli_train_vgg11_on_mnist5k_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "vgg11", "--dataset", "mnist5k", "--epochs", "1",
              "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("Error: model vgg11 does not fit mnist5k (inputs 1×28×28, 10 classes)")
    assert err.endswith("models that fit: mlp, fashion-cnn, resnet18, small-cnn")
    assert not out.exists()  # refused before anything was written


def test_a_checkpoint_that_does_not_fit_the_data_is_one_line(tmp_path) -> None:
    checkpoint = save_checkpoint(tmp_path / "model.pt", build_model("mlp", hidden=[8]), "mlp",
                                 {"hidden": [8]}, "mnist5k", None)
    root = write_fake_cifar(tmp_path / "data", "cifar10", n_train=20, n_test=10)
    with fake_cifar_checksums(), pytest.raises(WeightgeoError) as info:
        load_with_data(checkpoint, "cifar10", data_root=root, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("model mlp does not fit cifar10 (inputs 3×32×32, 10 classes)")
    assert message.endswith("models that fit: mlp, vgg11, vgg16, resnet18, small-cnn")
    # the same checkpoint fits its own data
    loaded = load_with_data(checkpoint, device="cpu")
    assert loaded.test.input_shape == (1, 28, 28) and len(load_dataset("mnist5k", "test")) == 1000
