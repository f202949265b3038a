"""Fake (meta) kernels: output shapes and dtypes of every fastops op, so torch.compile and
FakeTensor tracing go through them without running a kernel. They mirror the real kernels'
outputs exactly (contiguous results; empty tensors for gradients output_mask leaves out)."""

import torch


def _grad(needed, like, shape_fn):
    """A gradient of shape ``shape_fn()`` if it is needed, else the empty placeholder."""
    return like.new_empty(shape_fn()) if needed else like.new_empty((0,))


@torch.library.register_fake("fastops::linear")
def _linear_fake(input, weight, bias, activation):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("fastops::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output, activation, output_mask):
    need_input, need_weight, need_bias = output_mask
    out_features = grad_output.shape[-1]
    return (
        _grad(need_input, grad_output, lambda: (*grad_output.shape[:-1], weight.shape[1])),
        _grad(need_weight, grad_output, lambda: (out_features, input.shape[-1])),
        _grad(need_bias, grad_output, lambda: (out_features,)),
    )


def _batch_norm_like(tensor):
    """An uninitialised tensor with the layout the batch_norm kernels give their results: the
    strides of ``tensor`` when it is dense in NC* or channels-last order, else contiguous."""
    dense = tensor.is_contiguous() or tensor.movedim(1, -1).is_contiguous()
    return torch.empty_like(tensor) if dense else tensor.new_empty(tensor.shape)


def _batch_norm_stat_dtype(dtype):
    """Saved mean / inverse std: float32, or float64 for a float64 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastops::batch_norm")
def _batch_norm_fake(input, weight, bias, running_mean, running_var, training, momentum, eps,
                     activation):
    stats = input.new_empty((input.shape[1],), dtype=_batch_norm_stat_dtype(input.dtype))
    return _batch_norm_like(input), stats, torch.empty_like(stats)


@torch.library.register_fake("fastops::batch_norm_backward")
def _batch_norm_backward_fake(grad_output, input, weight, output, save_mean, save_invstd, training,
                              activation, output_mask):
    need_input, need_weight, need_bias = output_mask
    reference = input if input is not None else output if output is not None else grad_output
    params = weight if weight is not None else grad_output
    channels = grad_output.shape[1]
    return (
        _batch_norm_like(reference) if need_input else grad_output.new_empty((0,)),
        _grad(need_weight, params, lambda: (channels,)),
        _grad(need_bias, params, lambda: (channels,)),
    )
