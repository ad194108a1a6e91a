"""A registry of small models as test data: every architecture family a user brings.

Each :class:`ModelCase` builds a float64 network (tiny: at most about 1,500 weights, so dense
Jacobians and dense solves take milliseconds), a batch of inputs and, for a model whose
forward does not return a tensor, the ``output=`` selector that picks its logits. The
contract and property tests run every metric over every case (``ZOO``); a new family is one
entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer
from torchvision.models.resnet import BasicBlock
from torchvision.ops import SqueezeExcitation

from weightgeo import FunctionalModel
from weightgeo.functional import OutputSelector

BATCH = 3


@dataclass(frozen=True)
class ModelCase:
    """A model family: ``build()`` gives the network, ``inputs(generator)`` a batch for it."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Tensor]
    output: OutputSelector = None

    def make(self, seed: int = 0) -> tuple[nn.Module, FunctionalModel, Tensor, Tensor]:
        """(float64 module, its FunctionalModel, θ, inputs), the same for the same seed."""
        torch.manual_seed(seed)
        model = self.build().double()
        randomise_running_statistics(model)
        fmodel = FunctionalModel(model, output=self.output)
        x = self.inputs(torch.Generator().manual_seed(seed + 1))
        return model, fmodel, fmodel.theta(), x


def randomise_running_statistics(model: nn.Module) -> None:
    """Non-trivial batch-norm statistics, so that eval-mode batch norm is not the identity."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def images(channels: int, side: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(BATCH, channels, side, side, generator=g, dtype=torch.float64)


def vectors(*shape: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(BATCH, *shape, generator=g, dtype=torch.float64)


def padded_sequences(lengths: tuple[int, ...], steps: int, features: int) -> Callable[[torch.Generator], Tensor]:
    """Sequences of the given lengths, zero after their end (BATCH of them)."""
    def make(g: torch.Generator) -> Tensor:
        x = torch.randn(BATCH, steps, features, generator=g, dtype=torch.float64)
        return x * (torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None])[..., None]
    return make


def tokens(vocabulary: int, length: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randint(0, vocabulary, (BATCH, length), generator=g)


# -- the networks ------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Conv → batch norm → tanh → max pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.max_pool2d(torch.tanh(self.norm(self.conv(x))), 2).flatten(1))


class SmallResNet(nn.Module):
    """torchvision's BasicBlock twice (identity and strided shortcut), global pooling, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU())
        shortcut = nn.Sequential(nn.Conv2d(3, 4, 1, stride=2, bias=False), nn.BatchNorm2d(4))
        self.blocks = nn.Sequential(BasicBlock(3, 3), BasicBlock(3, 4, stride=2, downsample=shortcut))
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class GRUClassifier(nn.Module):
    """Embedded tokens → GRU → the last hidden state → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(7, 4), nn.GRU(4, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(x))[1][-1])


class LSTMClassifier(nn.Module):
    """Two stacked LSTM layers over real-valued sequences → the last output → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(3, 4, num_layers=2, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class PackedGRU(nn.Module):
    """A bidirectional GRU over packed sequences of different lengths (trailing all-zero steps
    are padding), its final states → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.head = nn.GRU(3, 3, batch_first=True, bidirectional=True), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        lengths = (x.abs().sum(-1) > 0).sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, hidden = self.rnn(packed)
        return self.head(hidden.transpose(0, 1).flatten(1))


class TransformerClassifier(nn.Module):
    """Token and position embeddings → nn.TransformerEncoder (2 layers, GELU) → mean → linear."""

    def __init__(self, vocabulary: int = 11, width: int = 8, length: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.1 * torch.randn(1, length, width))
        layer = nn.TransformerEncoderLayer(width, 2, 2 * width, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


class CausalAttention(nn.Module):
    """F.scaled_dot_product_attention (causal) and nn.MultiheadAttention (weights returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.mha, self.head = nn.Linear(4, 12), nn.MultiheadAttention(4, 2, batch_first=True), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 2, 2).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        out, _ = self.mha(h, h, h)
        return self.head(out[:, -1])


class Normalised(nn.Module):
    """GroupNorm, InstanceNorm (affine) and LayerNorm between a conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.group, self.instance = nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True)
        self.layer, self.head = nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.instance(self.group(self.conv(x))))
        return self.head(self.layer(F.avg_pool2d(h, 2).flatten(1)))


class MobileBlock(nn.Module):
    """MobileNetV3's pieces: a depthwise conv, Hardswish, squeeze-and-excitation with Hardsigmoid
    (whose fused backward has no derivative)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.depthwise = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 3, groups=4)
        self.excite = SqueezeExcitation(4, 2, scale_activation=nn.Hardsigmoid)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.excite(F.hardswish(self.depthwise(F.hardswish(self.expand(x)))))
        return self.head(h.mean((2, 3)))


class TiedEmbedding(nn.Module):
    """The output layer shares the embedding's weight (a language model's tied head)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden = nn.Embedding(5, 4), nn.Linear(4, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.hidden(self.embed(x).mean(1))))


def frozen_mlp() -> nn.Module:
    """An MLP whose first weight and second bias are frozen (outside θ)."""
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    return model


class DictOutput(nn.Module):
    """Returns {"logits": …, "features": …}: needs output="logits"."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Linear(5, 6), nn.Tanh()), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        features = self.body(x)
        return {"features": features, "logits": self.head(features)}


@dataclass
class ClassifierOutput:
    """What Hugging Face-style models return: an object with ``.logits``."""

    logits: Tensor
    hidden: Tensor


class ObjectOutput(DictOutput):
    def forward(self, x: Tensor) -> ClassifierOutput:
        out = super().forward(x)
        return ClassifierOutput(out["logits"], out["features"])


class TupleOutput(DictOutput):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = super().forward(x)
        return out["features"], out["logits"]


def small_vit() -> nn.Module:
    return VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                             mlp_dim=16, num_classes=3)


CASES = (
    ModelCase("mlp", lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), vectors(5)),
    ModelCase("cnn-bn", SmallCNN, images(2, 6)),
    ModelCase("resnet", SmallResNet, images(1, 6)),
    ModelCase("gru", GRUClassifier, tokens(7, 4)),
    ModelCase("lstm", LSTMClassifier, vectors(4, 3)),
    ModelCase("packed-gru", PackedGRU, padded_sequences((2, 4, 3), 4, 3)),
    ModelCase("transformer", TransformerClassifier, tokens(11, 5)),
    ModelCase("vit", small_vit, images(3, 8)),
    ModelCase("attention", CausalAttention, vectors(4, 4)),
    ModelCase("norms", Normalised, images(1, 6)),
    ModelCase("mobile", MobileBlock, images(2, 5)),
    ModelCase("tied", TiedEmbedding, tokens(5, 3)),
    ModelCase("frozen", frozen_mlp, vectors(5)),
    ModelCase("dict-output", DictOutput, vectors(5), output="logits"),
    ModelCase("object-output", ObjectOutput, vectors(5), output="logits"),
    ModelCase("tuple-output", TupleOutput, vectors(5), output=lambda out: out[1]),
)

ZOO: dict[str, ModelCase] = {case.name: case for case in CASES}
