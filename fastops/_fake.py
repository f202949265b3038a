"""Fake (meta) kernels: output shapes and dtypes of every fastops op, so torch.compile and
FakeTensor tracing go through them without running a kernel. They mirror the real kernels'
outputs exactly (contiguous results; empty tensors for gradients output_mask leaves out)."""

import torch
from torch._prims_common import suggest_memory_format

from .functional import _max_pool2d_output_size



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

def _compact_argmax_dtype(kernel_size):
    """Mirrors compact_argmax_dtype in csrc/cpu/max_pool2d.cpp and triton_kernels/max_pool2d.py."""
    window = kernel_size[0] * kernel_size[1]
    return torch.uint8 if window <= 256 else torch.int16 if window <= 32768 else torch.int32


@torch.library.register_fake("fastops::max_pool2d")
def _max_pool2d_fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    torch._check(input.dim() == 4,
                 lambda: f"fastops::max_pool2d: expected a 4-D input, got {input.dim()}-D")
    out_h, out_w = _max_pool2d_output_size(input.shape, kernel_size, stride, padding, dilation,
                                           ceil_mode)
    shape = (input.shape[0], input.shape[1], out_h, out_w)
    format = suggest_memory_format(input)
    return (torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=format),
            torch.empty(shape, dtype=_compact_argmax_dtype(kernel_size), device=input.device,
                        memory_format=format))


@torch.library.register_fake("fastops::max_pool2d_backward")
def _max_pool2d_backward_fake(grad_output, argmax, input_size, kernel_size, stride, padding,
                              dilation):
    return torch.empty((*argmax.shape[:2], *input_size), dtype=grad_output.dtype,
                       device=grad_output.device, memory_format=suggest_memory_format(argmax))


@torch.library.register_fake("fastops::max_pool2d_indices")
def _max_pool2d_indices_fake(argmax, input_width, kernel_size, stride, padding, dilation):
    return torch.empty(argmax.shape, dtype=torch.int64, device=argmax.device,
                       memory_format=suggest_memory_format(argmax))

def _accumulate_dtype(dtype):
    """The dtype of the per-row log-sum-exp and total_weight: float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _loss_outputs(input, rows_shape, reduction):
    acc = _accumulate_dtype(input.dtype)
    loss = input.new_empty(rows_shape if reduction == "none" else ())
    return loss, input.new_empty(rows_shape, dtype=acc), input.new_empty((), dtype=acc)


def _classes_last_grad(needed, input):
    """A gradient of input [N, C, d...] written as contiguous rows [N, d..., C] (the kernels'
    layout), returned as a view of input's shape."""
    if not needed:
        return input.new_empty((0,))
    return input.new_empty((input.shape[0], *input.shape[2:], input.shape[1])).movedim(-1, 1)


@torch.library.register_fake("fastops::cross_entropy")
def _cross_entropy_fake(input, target, weight, reduction, ignore_index, label_smoothing):
    return _loss_outputs(input, (input.shape[0], *input.shape[2:]), reduction)


@torch.library.register_fake("fastops::cross_entropy_backward")
def _cross_entropy_backward_fake(grad_loss, input, target, weight, logsumexp, total_weight,
                                 reduction, ignore_index, label_smoothing, output_mask):
    return tuple(_classes_last_grad(needed, input) for needed in output_mask)


@torch.library.register_fake("fastops::linear_cross_entropy")
def _linear_cross_entropy_fake(input, linear_weight, bias, target, weight, reduction,
                               ignore_index, label_smoothing):
    return _loss_outputs(input, (input.shape[0],), reduction)


@torch.library.register_fake("fastops::linear_cross_entropy_backward")
def _linear_cross_entropy_backward_fake(grad_loss, input, linear_weight, bias, target, weight,
                                        logsumexp, total_weight, reduction, ignore_index,
                                        label_smoothing, output_mask):
    need_input, need_linear_weight, need_bias, need_target = output_mask
    classes = linear_weight.shape[0]
    return (
        _grad(need_input, input, lambda: input.shape),
        _grad(need_linear_weight, input, lambda: linear_weight.shape),
        _grad(need_bias, input, lambda: (classes,)),
        _grad(need_target, input, lambda: (input.shape[0], classes)),
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
