"""Triton kernels of fastops.linear: a tiled matmul with bias + ReLU + dropout in its epilogue,
reused for the backward (with the ReLU mask applied to its left operand while loading it), and
a column-sum kernel for the bias gradient. With dropout, the backward first forms
g' = g * noise * (out > 0) in one elementwise pass (the noise regenerated from the seed, as in
triton_kernels/dropout.py), then runs the same matmuls on g' unmasked.

    forward:      out[M, N]   = dropout(act(x[M, K] @ weight[N, K]^T + bias[N]))
    grad_input:   gx[M, K]    = (g * (out > 0))[M, N] @ weight[N, K]
    grad_weight:  gw[N, K]    = (g * (out > 0))^T[N, M] @ x[M, K]
    grad_bias:    gb[N]       = sum_m (g * (out > 0))[m, N]
"""

import torch
import triton
import triton.language as tl

from ._utils import (
    autotune,
    cdiv,
    checked_outputs,
    dot_shared_memory,
    fp32_dot_precision,
    size_bucket,
    tl_accumulate_dtype,
)
from .dropout import dropout_inplace, noise_args, noise_scale, tile_uniforms

_MATMUL_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8},
                  num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8},
                  num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8},
                  num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=5, num_warps=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=5, num_warps=2),
    # fewer accumulator elements per thread (see _acc_per_thread_limit)
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                  num_stages=3, num_warps=8),
]


def _vector_aligned(tensor):
    """Rows that Triton can load 16 bytes at a time: a 16-byte-aligned start and every stride 1
    or a multiple of 16 elements (what Triton's argument specialization checks)."""
    return tensor.data_ptr() % 16 == 0 and all(s == 1 or s % 16 == 0 for s in tensor.stride())


def _acc_per_thread_limit(args):
    """Accumulator elements per thread past which ptxas spills registers, as measured with
    tests/sm90.py --autotune all (make aot): 128 for a tensor-core dot, 16 where the dot or the
    epilogue runs on CUDA cores (the FMA-based IEEE fp32 dot; the Philox rounds of the dropout
    epilogue); halved when the A tile is also summed in registers (ROW_SUM_A), quartered for
    a tensor-core dot whose A tile is masked (MASK_A; 64 spilled under Triton 3.6), and halved
    again when A's rows cannot be loaded as 16-byte vectors (a 10- or 259-wide gradient read
    transposed)."""
    cuda_core = args["DROPOUT"] or (args["a_ptr"].dtype == torch.float32
                                    and args["INPUT_PRECISION"] == "ieee")
    limit = 16 if cuda_core else 128
    if args["MASK_A"]:
        limit //= 2 if cuda_core else 4
    elif args["ROW_SUM_A"]:
        limit //= 2
    if not _vector_aligned(args["a_ptr"]):
        limit //= 2
    return limit


def _prune_matmul(configs, args):
    """Tiles for the problem at hand: none taller or wider than its (bucketed) M and N need
    (a 10-class head gets no 256-wide tile), and none past _acc_per_thread_limit."""
    m, n = max(size_bucket(args["M"]), 32), max(size_bucket(args["N"]), 64)
    limit = _acc_per_thread_limit(args)

    def acc_per_thread(c):
        return c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] // (32 * c.num_warps)

    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m and c.kwargs["BLOCK_N"] <= n
            and acc_per_thread(c) <= limit]
    return kept or [min(configs, key=acc_per_thread)]


@autotune(_MATMUL_CONFIGS, key=["M", "N", "K", "HAS_BIAS", "RELU", "MASK_A", "DROPOUT",
                                "ROW_SUM_A"],
          bucket=["M"], prune=_prune_matmul, shared_memory=dot_shared_memory("a_ptr", "b_ptr"))
@triton.jit(do_not_specialize=["seed"])
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, mask_ptr, row_sum_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_mm, stride_mk,
    seed, p, scale_bits,
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, MASK_A: tl.constexpr, DROPOUT: tl.constexpr,
    DROPOUT_ALIGNED: tl.constexpr, ROW_SUM_A: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """c[M, N] = dropout(act(a'[M, K] @ b[K, N] + bias[N])) with a' = a * !(mask <= 0) when
    MASK_A (mask has a's shape and its own strides) and the dropout of unit m * N + n when
    DROPOUT (seed, p, scale_bits as in dropout.noise_args; DROPOUT_ALIGNED: N % 4 == 0). With
    ROW_SUM_A, also row_sum[M] = sum_k a'[M, k] (the bias gradient, read off the tiles the
    weight gradient loads anyway). fp32 accumulation; grouped tile order for L2 reuse."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # 64-bit offsets: M * stride can exceed 2**31 for large activations.
    rows = offs_m.to(tl.int64)[:, None]
    cols = offs_n.to(tl.int64)[None, :]
    a_ptrs = a_ptr + rows * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols * stride_bn
    if MASK_A:
        mask_ptrs = mask_ptr + rows * stride_mm + offs_k[None, :] * stride_mk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a_in = (offs_m[:, None] < M) & (offs_k[None, :] < k_left)
        a = tl.load(a_ptrs, mask=a_in, other=0.0)
        if MASK_A:
            # zero where mask <= 0 (torch's threshold_backward: a NaN output passes grad)
            drop = tl.load(mask_ptrs, mask=a_in, other=0.0) <= 0
            a = tl.where(drop, tl.zeros_like(a), a)
            mask_ptrs += BLOCK_K * stride_mk
        if ROW_SUM_A:
            row_sum += tl.sum(a.to(tl.float32), axis=1)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as with torch.relu
    if DROPOUT:
        uniforms = tile_uniforms(seed, offs_m.to(tl.int64), pid_n * BLOCK_N, N, BLOCK_M, BLOCK_N,
                                 DROPOUT_ALIGNED)
        acc = acc * tl.where(uniforms >= p, noise_scale(scale_bits, tl.float32), 0.0)
    c_ptrs = c_ptr + rows * stride_cm + cols * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
    if ROW_SUM_A:
        if pid_n == 0:
            tl.store(row_sum_ptr + offs_m, row_sum.to(row_sum_ptr.dtype.element_ty),
                     mask=offs_m < M)


@triton.jit
def column_sum_kernel(
    g_ptr, mask_ptr, out_ptr,
    M, N,
    stride_gm, stride_gn, stride_mm, stride_mn,
    MASK_G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out[N] = sum over rows of g' where g' = g * !(mask <= 0) when MASK_G; fp32 accumulation
    in a [BLOCK_M, BLOCK_N] tile, reduced across rows once at the end. (Only the bias gradient
    without the weight gradient uses it: with both, matmul_kernel's ROW_SUM_A computes it.)"""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        g = tl.load(g_ptr + offs_m[:, None] * stride_gm + offs_n[None, :] * stride_gn, mask=inside,
                    other=0.0)
        g = g.to(tl.float32)
        if MASK_G:
            drop = tl.load(mask_ptr + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                           mask=inside, other=0.0) <= 0
            g = tl.where(drop, 0.0, g)
        acc += g
    tl.store(out_ptr + offs_n, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=offs_n < N)


# At most 8 elements per thread: Philox per element (N % 4 != 0) spills registers at 32 (Triton
# 3.9) and at 16 (Triton 3.6), as tests/sm90.py shows
@autotune([triton.Config({"BLOCK_M": 16, "BLOCK_N": 128}, num_warps=8),
           triton.Config({"BLOCK_M": 8, "BLOCK_N": 256}, num_warps=8),
           triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=16)],
          key=["M", "N", "RELU", "ALIGNED"], bucket=["M"])
@triton.jit(do_not_specialize=["seed"])
def dropout_grad_kernel(
    g_ptr, out_ptr, res_ptr,
    M, N,
    stride_gm, stride_gn, stride_om, stride_on,
    seed, p, scale_bits,
    RELU: tl.constexpr, ALIGNED: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """res[M, N] (contiguous) = g * noise(m * N + n), zeroed where out <= 0 when RELU: torch's
    order, dropout's backward then threshold_backward (a NaN output passes the gradient).
    ALIGNED: N % 4 == 0 (see dropout.tile_uniforms)."""
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m[:, None]
    cols = offs_n[None, :]
    inside = (rows < M) & (cols < N)
    g = tl.load(g_ptr + rows * stride_gm + cols * stride_gn, mask=inside, other=0.0).to(COMPUTE)
    uniforms = tile_uniforms(seed, offs_m, tl.program_id(1) * BLOCK_N, N, BLOCK_M, BLOCK_N, ALIGNED)
    g = g * tl.where(uniforms >= p, noise_scale(scale_bits, COMPUTE), 0.0)
    if RELU:
        out = tl.load(out_ptr + rows * stride_om + cols * stride_on, mask=inside, other=0.0)
        g = tl.where(out <= 0, 0.0, g)
    tl.store(res_ptr + rows * N + cols, g.to(res_ptr.dtype.element_ty), mask=inside)


def _matmul(a, b, out, bias=None, relu=False, a_mask=None, dropout=None, row_sum=None):
    """out = dropout(act(a' @ b + bias)) for 2-D tensors of any strides (see matmul_kernel);
    dropout: None or (seed, p); row_sum: None or a [M] tensor that receives a''s row sums."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return out
    if K == 0:  # an empty sum: bias, activation and dropout only
        if row_sum is not None:
            row_sum.zero_()
        out.copy_(bias.expand(M, N) if bias is not None else torch.zeros_like(out))
        if relu:
            out.clamp_(min=0)
        if dropout is not None:
            dropout_inplace(out, *dropout, 1)
        return out
    mask_strides = a_mask.stride() if a_mask is not None else (0, 0)
    seed, p, scale_bits = noise_args(*dropout) if dropout is not None else (0, 0.0, 0)

    def grid(meta):
        return (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)

    matmul_kernel[grid](
        a, b, out, bias, a_mask, row_sum,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        mask_strides[0], mask_strides[1],
        seed, p, scale_bits,
        HAS_BIAS=bias is not None, RELU=relu, MASK_A=a_mask is not None,
        DROPOUT=dropout is not None,
        DROPOUT_ALIGNED=N % 4 == 0, ROW_SUM_A=row_sum is not None,
        INPUT_PRECISION=fp32_dot_precision(a.dtype),
    )
    return out


def _dropout_arg(dropout_seed, dropout_p):
    """The ``dropout`` argument of _matmul: None, or (seed tensor, p) (checked by the rules)."""
    return None if dropout_seed is None else (dropout_seed, dropout_p)


def linear_forward(input, weight, bias, activation, dropout_seed=None, dropout_p=0.0):
    """input [*, K], weight [N, K], bias [N] or None -> [*, N]; activation "none" | "relu";
    with a dropout_seed (one-element int64 CPU tensor), dropout(p = dropout_p) of the result."""
    out = checked_outputs("linear", input, weight, bias, activation, dropout_seed, dropout_p)
    x = input.reshape(input.shape[:-1].numel(), input.shape[-1])  # (-1 is ambiguous for K = 0)
    _matmul(x, weight.t(), out.view(x.shape[0], weight.shape[0]), bias=bias,
            relu=activation == "relu", dropout=_dropout_arg(dropout_seed, dropout_p))
    return out


def _dropout_relu_grad(g, relu_mask, dropout):
    """g * noise * (relu_mask > 0 when given), contiguous [M, N] (see dropout_grad_kernel)."""
    M, N = g.shape
    res = torch.empty((M, N), device=g.device, dtype=g.dtype)
    if res.numel() == 0:
        return res
    seed, p, scale_bits = noise_args(*dropout)
    mask_strides = relu_mask.stride() if relu_mask is not None else (0, 0)
    dropout_grad_kernel[lambda meta: (cdiv(M, meta["BLOCK_M"]), cdiv(N, meta["BLOCK_N"]))](
        g, relu_mask, res, M, N, g.stride(0), g.stride(1), mask_strides[0], mask_strides[1],
        seed, p, scale_bits, RELU=relu_mask is not None, ALIGNED=N % 4 == 0,
        COMPUTE=tl_accumulate_dtype(g.dtype))
    return res


def linear_backward(grad_output, input, weight, output, activation, output_mask,
                    dropout_seed=None, dropout_p=0.0):
    """Gradients (input, weight, bias) of linear_forward; the ReLU mask comes from ``output``,
    the dropout noise from the seed. Gradients not asked for in output_mask come back as empty
    tensors."""
    grad_input, grad_weight, grad_bias = checked_outputs(
        "linear_backward", grad_output, input, weight, output, activation, output_mask,
        dropout_seed, dropout_p)
    need_input, need_weight, need_bias = output_mask
    n = grad_output.shape[-1]
    rows = grad_output.shape[:-1].numel()  # (-1 is ambiguous for N = 0)
    g = grad_output.reshape(rows, n)
    relu_mask = output.reshape(rows, n) if activation == "relu" else None
    dropout = _dropout_arg(dropout_seed, dropout_p)
    if dropout is not None:
        # one pass applies noise and ReLU mask; the matmuls then read g' unmasked
        g = _dropout_relu_grad(g, relu_mask, dropout)
        relu_mask = None

    if need_input:
        _matmul(g, weight, grad_input.view(g.shape[0], weight.shape[1]), a_mask=relu_mask)
    # the bias gradient comes with the weight gradient's loads, unless that product is empty
    bias_in_matmul = need_bias and need_weight and input.shape[-1] > 0
    if need_weight:
        x = input.reshape(g.shape[0], input.shape[-1])
        _matmul(g.t(), x, grad_weight, a_mask=relu_mask.t() if relu_mask is not None else None,
                row_sum=grad_bias if bias_in_matmul else None)
    if need_bias and not bias_in_matmul:
        mask_strides = relu_mask.stride() if relu_mask is not None else (0, 0)
        block_n = 64
        column_sum_kernel[(cdiv(n, block_n),)](
            g, relu_mask, grad_bias, g.shape[0], n,
            g.stride(0), g.stride(1), mask_strides[0], mask_strides[1],
            MASK_G=relu_mask is not None, BLOCK_M=32, BLOCK_N=block_n,
        )
    return grad_input, grad_weight, grad_bias
