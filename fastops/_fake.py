"""Fake (meta) kernels: output shapes and dtypes of every fastops op, so torch.compile and
FakeTensor tracing go through them without running a kernel. They mirror the real kernels'
outputs exactly (contiguous results; empty tensors for gradients output_mask leaves out)."""

import torch


def _grad(needed, like, shape_fn):
    """A gradient of shape ``shape_fn()`` if it is needed, else the empty placeholder."""
    return like.new_empty(shape_fn()) if needed else like.new_empty((0,))


@torch.library.register_fake("fastops::linear")
def _linear_fake(input, weight, bias, activation, dropout_seed=None, dropout_p=0.0):
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("fastops::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output, activation, output_mask,
                          dropout_seed=None, dropout_p=0.0):
    need_input, need_weight, need_bias = output_mask
    out_features = grad_output.shape[-1]
    return (
        _grad(need_input, grad_output, lambda: (*grad_output.shape[:-1], weight.shape[1])),
        _grad(need_weight, grad_output, lambda: (out_features, input.shape[-1])),
        _grad(need_bias, grad_output, lambda: (out_features,)),
    )


@torch.library.register_fake("fastops::dropout")
def _dropout_fake(input, seed, p, channel_size):
    return input.new_empty(input.shape)  # contiguous, as the kernels return it


@torch.library.register_fake("fastops::dropout_")
def _dropout_inplace_fake(input, seed, p, channel_size):
    return None
