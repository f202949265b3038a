"""fastops.functional.batch_norm / batch_norm_relu: torch.nn.functional.batch_norm with a fused
ReLU; and the op's CUDA (Triton) kernels."""

import math

import torch

from .._checks import SUPPORTED_DTYPES, check_activation, check_tensor, fail
from .._cuda import register_cuda_kernels
from .._dispatch import operator

batch_norm_op = operator("batch_norm")


_REDUCED = (torch.float16, torch.bfloat16)


def _batch_norm_channels(tensor, name, input, channels, fn, flat):
    """Validates one per-channel argument of batch_norm and returns it 1-D. Parameters may have
    any shape holding ``channels`` elements, as torch allows (``flat``); running statistics, which
    are updated in place, must be 1-D. dtype: the input's, or float32 for a float16/bfloat16 input
    (as torch on CPU). Conditions are tested before any message is formatted (a per-call path)."""
    if tensor is None:
        return None
    check_tensor(tensor, name, fn)
    if tensor.numel() != channels or (not flat and tensor.dim() != 1):
        fail(fn, f"expected {name} of shape [{channels}] (the channels of input), got "
                 f"{list(tensor.shape)}")
    if tensor.device != input.device:
        fail(fn, f"expected {name} on the device of input ({input.device}), got {tensor.device}")
    if tensor.dtype != input.dtype and not (input.dtype in _REDUCED
                                            and tensor.dtype == torch.float32):
        fail(fn, f"expected {name} to have the dtype of input ({input.dtype})"
                 f"{' or float32' if input.dtype in _REDUCED else ''}, got {tensor.dtype}")
    return tensor if tensor.dim() == 1 else tensor.reshape(-1)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-05, *, activation=None):
    """``torch.nn.functional.batch_norm`` (+ optional fused activation).

    input: [N, C, *] (or, as torch, an empty 1-D input, returned as it is);
    running_mean, running_var: [C] or None (updated in place when training);
    weight, bias: [C] or None; returns [N, C, *] in the layout of input (channels-last stays
    channels-last). Training normalises with the batch statistics (biased variance) and moves the
    running statistics towards them by ``momentum`` (unbiased variance); evaluation normalises
    with the running statistics. activation: None or "relu" (applied in the normalisation pass).
    Errors are torch's (type and message) where torch has one.
    """
    if (training.__class__ is bool and momentum.__class__ is float and eps.__class__ is float
            and (activation is None or activation == "relu")):
        # The common call ([N, C, *] input, [C] parameters and statistics) goes straight to the
        # op, whose rules check it: a small layer's per-call cost is all Python here. torch's
        # wording of an error, and what torch also takes (a 0-D or empty 1-D input, parameters
        # of any shape holding C elements), are the general path below, taken only when the op
        # rejects the call (its rules run before any kernel, so nothing has changed).
        try:
            return batch_norm_op(input, weight, bias, running_mean, running_var, training,
                                 momentum, eps, activation or "none")[0]
        except (RuntimeError, ValueError, TypeError, IndexError):
            pass
    fn = "batch_norm"
    activation = check_activation(activation, fn)
    check_tensor(input, "input", fn)
    if input.dtype not in SUPPORTED_DTYPES:
        fail(fn, f'"batch_norm" not implemented for {input.dtype}: expected input to have a '
                 "floating-point dtype (float16, bfloat16, float32 or float64)",
             NotImplementedError)
    # torch's order: the batch size and eps (its Python checks), momentum (its argument
    # parser), then the running statistics and parameters.
    if training:
        if input.dim() == 0:  # torch indexes the batch size first (IndexError)
            fail(fn, "expected input of shape [N, C, *] (at least 2-D), got a 0-D tensor of "
                     "shape []", IndexError)
        if input.shape[0] * math.prod(input.shape[2:]) == 1:
            fail(fn, "Expected more than 1 value per channel when training, got input size "
                     f"{input.size()}", ValueError)
        if not eps > 0.0:
            fail(fn, f"batch_norm eps must be positive during training, but got {eps}", ValueError)
    elif not eps >= 0.0:
        fail(fn, f"batch_norm eps must be non-negative, but got {eps}", ValueError)
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        fail(fn, f"expected momentum to be a float, got {type(momentum).__name__}", TypeError)
    if input.dim() < 2:
        return _batch_norm_without_channels(input, running_mean, running_var, weight, bias,
                                            training, activation, fn)
    if training:
        if (running_mean is None) != (running_var is None):
            fail(fn, "running_mean and running_var must either both be None or neither be None",
                 ValueError)
    else:
        if running_mean is None:
            fail(fn, "running_mean must be defined in evaluation mode")
        if running_var is None:
            fail(fn, "running_var must be defined in evaluation mode")
    channels = input.shape[1]
    # torch's order: the running statistics, then the parameters.
    running_mean = _batch_norm_channels(running_mean, "running_mean", input, channels, fn,
                                        flat=False)
    running_var = _batch_norm_channels(running_var, "running_var", input, channels, fn, flat=False)
    weight = _batch_norm_channels(weight, "weight", input, channels, fn, flat=True)
    bias = _batch_norm_channels(bias, "bias", input, channels, fn, flat=True)
    dtypes = {t.dtype for t in (weight, bias, running_mean, running_var) if t is not None}
    if len(dtypes) > 1:
        fail(fn, "expected weight, bias, running_mean and running_var to share one dtype, got "
                 f"{sorted(str(d) for d in dtypes)}")
    output, _, _ = batch_norm_op(input, weight, bias, running_mean, running_var, bool(training),
                                   float(momentum), float(eps), activation)
    return output


def _batch_norm_without_channels(input, running_mean, running_var, weight, bias, training,
                                 activation, fn):
    """batch_norm of a 0-D or 1-D input, which has no channel dimension. torch returns an empty
    input as it is (a copy, times weight[0] plus bias[0], with no check of the per-channel
    arguments) and rejects any other: with a RuntimeError when a per-channel argument is
    given or in evaluation (it checks them against a channel count the input does not have),
    else with an IndexError (dimension 1 out of range)."""
    channel_args = {"running_mean": running_mean, "running_var": running_var, "weight": weight,
                    "bias": bias}
    for name, tensor in channel_args.items():
        if tensor is not None:
            check_tensor(tensor, name, fn)
    if input.numel() == 0:
        output = input.clone()
        if weight is not None:
            output = output * weight[0]
        if bias is not None:
            output = output + bias[0]
        return torch.relu(output) if activation == "relu" else output
    given = any(tensor is not None for tensor in channel_args.values())
    fail(fn, f"expected input of shape [N, C, *] (at least 2-D), got a {input.dim()}-D tensor "
             f"of shape {list(input.shape)}",
         RuntimeError if given or not training else IndexError)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-05):
    """``relu(batch_norm(...))`` in one pass; arguments and shapes as :func:`batch_norm`."""
    return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                      activation="relu")


register_cuda_kernels("batch_norm", batch_norm="batch_norm_forward",
                      batch_norm_backward="batch_norm_backward")
