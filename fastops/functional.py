"""The torch.nn.functional mirror: same signatures, defaults and semantics as the torch
functions, validation with clear messages, then one fastops op call."""

import torch

from ._checks import check, check_activation, check_float_dtype, check_like, check_tensor

_ops = torch.ops.fastops


# --------------------------------------------------------------------------------------- linear

def linear(input, weight, bias=None, *, activation=None):
    """``torch.nn.functional.linear`` (+ optional fused activation).

    input: [*, in_features]; weight: [out_features, in_features] (or [in_features], giving
    [*] like torch); bias: [out_features] or broadcastable to it; returns [*, out_features].
    activation: None or "relu" (applied in the GEMM epilogue).
    """
    fn = "linear"
    activation = check_activation(activation, fn)
    check_tensor(input, "input", fn)
    check_tensor(weight, "weight", fn)
    check_float_dtype(input, "input", fn)
    check_like(weight, "weight", input, "input", fn)
    check(input.dim() >= 1, fn, "expected input to have at least 1 dimension, got a 0-D tensor")
    check(weight.dim() in (1, 2), fn, f"expected weight to be 1-D or 2-D, got {weight.dim()}-D")
    vector_weight = weight.dim() == 1
    weight_2d = weight.unsqueeze(0) if vector_weight else weight
    check(input.shape[-1] == weight_2d.shape[1], fn,
          f"input and weight shapes cannot be multiplied: input.shape[-1] is {input.shape[-1]}, "
          f"weight expects in_features = {weight_2d.shape[1]} (input {tuple(input.shape)}, "
          f"weight {tuple(weight.shape)})")
    if bias is None:
        output = _ops.linear(input, weight_2d, None, activation)
    else:
        check_tensor(bias, "bias", fn)
        check_like(bias, "bias", input, "input", fn)
        check(not vector_weight, fn, "a bias needs a 2-D weight (torch: mat2 must be a matrix)")
        out_features = weight_2d.shape[0]
        if bias.dim() <= 1 and bias.numel() in (1, out_features):
            output = _ops.linear(input, weight_2d, bias.reshape(-1).expand(out_features), activation)
        else:
            # torch also accepts any bias that broadcasts to the output (e.g. one per row):
            # rare, so it is added outside the fused epilogue.
            out_shape = (*input.shape[:-1], out_features)
            try:
                broadcasts = torch.broadcast_shapes(bias.shape, out_shape) == out_shape
            except RuntimeError:
                broadcasts = False
            check(broadcasts, fn,
                  f"expected bias of shape [{out_features}] or broadcastable to the output "
                  f"{list(out_shape)}, got {list(bias.shape)}")
            output = _ops.linear(input, weight_2d, None, "none") + bias
            if activation == "relu":
                output = torch.relu(output)
    return output.squeeze(-1) if vector_weight else output


def linear_relu(input, weight, bias=None):
    """``relu(linear(input, weight, bias))`` in one op; shapes as :func:`linear`."""
    return linear(input, weight, bias, activation="relu")
