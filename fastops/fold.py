"""fastops.fold_batchnorm: folds inference-time BatchNorm into the layer before it."""

import copy

import torch

_FOLDABLE = {  # preceding layer -> the BatchNorm that may follow it
    torch.nn.Conv2d: torch.nn.BatchNorm2d,
    torch.nn.Linear: torch.nn.BatchNorm1d,
}


def _can_fold(layer, norm):
    """A Conv2d / Linear (without a fused activation) followed by a BatchNorm over its output
    channels that normalises with running statistics."""
    for layer_type, norm_type in _FOLDABLE.items():
        if isinstance(layer, layer_type) and isinstance(norm, norm_type):
            out_channels = (layer.out_channels if isinstance(layer, torch.nn.Conv2d)
                            else layer.out_features)
            return (getattr(layer, "activation", None) is None
                    and norm.running_mean is not None and norm.num_features == out_channels)
    return False


@torch.no_grad()
def _fold(layer, norm):
    """A copy of ``layer`` computing norm(layer(x)) in evaluation mode:
    W' = W * gamma / sqrt(running_var + eps) (per output channel), b' = (b - running_mean) *
    gamma / sqrt(running_var + eps) + beta; computed in float64, stored in the layer's dtype."""
    folded = copy.deepcopy(layer)
    weight = layer.weight.double()
    scale = norm.running_var.double().add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.double()
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(scale)
    bias = (bias - norm.running_mean.double()) * scale
    if norm.bias is not None:
        bias = bias + norm.bias.double()
    folded.weight = torch.nn.Parameter(
        (weight * scale.view(-1, *[1] * (weight.dim() - 1))).to(layer.weight.dtype))
    folded.bias = torch.nn.Parameter(bias.to(layer.weight.dtype))
    return folded


def _fold_children(module):
    """Folds every (layer, BatchNorm) pair of consecutive children of each nn.Sequential in
    ``module`` (recursively), in place."""
    for child in module.children():
        _fold_children(child)
    if not isinstance(module, torch.nn.Sequential):
        return
    names = list(module._modules)
    for first, second in zip(names, names[1:], strict=False):
        layer, norm = module._modules[first], module._modules[second]
        if _can_fold(layer, norm):
            module._modules[first] = _fold(layer, norm)
            # A fused BatchNorm + ReLU leaves its ReLU behind.
            module._modules[second] = (torch.nn.ReLU()
                                       if getattr(norm, "activation", None) == "relu"
                                       else torch.nn.Identity())


def fold_batchnorm(model):
    """Returns a copy of ``model`` (which must be in evaluation mode) in which every Conv2d ->
    BatchNorm2d and Linear -> BatchNorm1d pair of consecutive modules of an ``nn.Sequential`` is
    folded into the Conv2d / Linear: its weight and bias absorb the BatchNorm's running
    statistics and affine parameters, and the BatchNorm becomes ``nn.Identity`` (``nn.ReLU``
    for a fused BatchNorm2dReLU). torch.nn and fastops.nn modules alike; the original model is
    left untouched. Evaluation outputs are unchanged (up to rounding); BatchNorms that use batch
    statistics (track_running_stats=False), follow another kind of layer or a layer with a fused
    activation are kept.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("fastops.fold_batchnorm: expected a torch.nn.Module, got "
                        f"{type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(
            "fastops.fold_batchnorm: folding uses the running statistics, so the model must be in "
            f"evaluation mode (call model.eval()); in training mode: {training[:5]}")
    folded = copy.deepcopy(model)
    _fold_children(folded)
    return folded
