"""Weight matching (Ainsworth et al., "Git Re-Basin", 2023): permute θ_b's hidden units onto θ_a's.

For an MLP (a chain of Linear layers with elementwise activations between them), permuting
the units of a hidden layer — the rows of its weight and bias and the columns of the next
layer's weight — leaves the network's function unchanged. Weight matching picks, layer by
layer, the permutation P_l maximising Σ_l ⟨W_l^a, P_l W_l^b P_{l−1}ᵀ⟩ + ⟨b_l^a, P_l b_l^b⟩ by a
linear assignment with the other layers' permutations fixed (coordinate descent, in random
order, until no permutation changes). The Hungarian algorithm is scipy's
``linear_sum_assignment``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel

_ELEMENTWISE = (
    nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.SiLU, nn.Softplus,
    nn.Identity, nn.Dropout, nn.Flatten,
)


def mlp_layers(model: FunctionalModel, name: str | None = None) -> list[tuple[str, str | None]]:
    """The (weight, bias) parameter names of an MLP's Linear layers in order; refuse anything else."""
    label = name or type(model.module).__name__
    layers: list[tuple[str, str | None]] = []
    previous_out = None
    for module_name, module in model.module.named_modules():
        if list(module.children()):
            continue
        if isinstance(module, nn.Linear):
            if previous_out is not None and module.in_features != previous_out:
                raise WeightgeoError(f"rebasin supports MLPs (a chain of Linear layers) only, not {label}")
            prefix = f"{module_name}." if module_name else ""
            layers.append((f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None))
            previous_out = module.out_features
        elif not isinstance(module, _ELEMENTWISE):
            raise WeightgeoError(
                f"rebasin supports MLPs (a chain of Linear layers) only, not {label} "
                f"(it has a {type(module).__name__})"
            )
    trainable = {n for w, b in layers for n in (w, b) if n is not None}
    if not layers or set(model.names) != trainable:
        raise WeightgeoError(f"rebasin supports MLPs (a chain of Linear layers) only, not {label}")
    return layers


def permute_mlp(model: FunctionalModel, theta: Tensor, perms: list[Tensor]) -> Tensor:
    """θ with hidden layer l's units reordered by ``perms[l]`` (new unit i = old unit perms[l][i])."""
    layers = mlp_layers(model)
    params = {n: p.clone() for n, p in model.unflatten(theta).items()}
    for layer, perm in enumerate(perms):
        w, b = layers[layer]
        params[w] = params[w][perm]
        if b is not None:
            params[b] = params[b][perm]
        w_next = layers[layer + 1][0]
        params[w_next] = params[w_next][:, perm]
    return torch.cat([params[n].reshape(-1) for n in model.names])


def weight_matching(
    model: FunctionalModel, theta_a: Tensor, theta_b: Tensor, max_iterations: int = 100, seed: int = 0
) -> tuple[Tensor, list[Tensor]]:
    """Permute θ_b's hidden units to match θ_a's; returns (π(θ_b), the permutations)."""
    from scipy.optimize import linear_sum_assignment

    layers = mlp_layers(model)
    pa = {n: p.detach().double().cpu() for n, p in model.unflatten(theta_a).items()}
    pb = {n: p.detach().double().cpu() for n, p in model.unflatten(theta_b).items()}
    sizes = [pa[w].shape[0] for w, _ in layers[:-1]]
    perms = [torch.arange(s) for s in sizes]
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iterations):
        changed = False
        for layer in torch.randperm(len(sizes), generator=generator).tolist():
            w, b = layers[layer]
            w_next = layers[layer + 1][0]
            wb = pb[w] if layer == 0 else pb[w][:, perms[layer - 1]]
            score = pa[w] @ wb.T
            if b is not None:
                score += torch.outer(pa[b], pb[b])
            wb_next = pb[w_next] if layer + 1 == len(sizes) else pb[w_next][perms[layer + 1]]
            score += pa[w_next].T @ wb_next
            _, columns = linear_sum_assignment(score.numpy(), maximize=True)
            new = torch.as_tensor(columns, dtype=torch.long)
            if not torch.equal(new, perms[layer]):
                old_score = score[torch.arange(len(new)), perms[layer]].sum()
                new_score = score[torch.arange(len(new)), new].sum()
                if new_score > old_score + 1e-12:
                    perms[layer] = new
                    changed = True
        if not changed:
            break
    device_perms = [p.to(theta_b.device) for p in perms]
    return permute_mlp(model, theta_b, device_perms), device_perms
