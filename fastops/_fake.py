"""Fake (meta) kernels: output shapes and dtypes of every fastops op, so torch.compile and
FakeTensor tracing go through them without running a kernel. They mirror the real kernels'
outputs exactly (contiguous results; empty tensors for gradients output_mask leaves out)."""

import torch
from torch._prims_common import suggest_memory_format


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


def _conv2d_output_size(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.register_fake("fastops::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, activation):
    height, width = (
        _conv2d_output_size(input.shape[2 + d], weight.shape[2 + d], stride[d], padding[d],
                            dilation[d])
        for d in range(2)
    )
    # channels-last when input or weight is, like the CPU kernel (and torch)
    formats = (suggest_memory_format(input), suggest_memory_format(weight))
    channels_last = torch.channels_last in formats
    return input.new_empty((input.shape[0], weight.shape[0], height, width)).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@torch.library.register_fake("fastops::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, output, input_size, stride, padding, dilation,
                          groups, activation, output_mask):
    need_input, need_weight, need_bias = output_mask
    grad_input = _grad(need_input, grad_output, lambda: tuple(input_size))
    if need_input:  # in the memory format of grad_output
        grad_input = grad_input.contiguous(memory_format=suggest_memory_format(grad_output))
    return (
        grad_input,
        _grad(need_weight, grad_output, lambda: tuple(weight.shape)),
        _grad(need_bias, grad_output, lambda: (weight.shape[0],)),
    )
