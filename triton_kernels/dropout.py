"""Triton kernels of fastops.dropout: the noise is regenerated from (seed, unit index) by Philox,
so nothing but the seed is stored, and it is the noise of the C++ CPU kernel bit for bit.

Unit u (an element, or a channel of ``channel_size`` consecutive elements) takes output u % 4 of
``tl.philox(seed, u // 4, 0, 0, 0)`` (the counter's high 32 bits go in the second word), as a
uniform float of ``tl.uint_to_uniform_float``; it is kept when that uniform is >= p.

    out[i] = x[i] * (scale if keep(i // channel_size) else 0),   scale = 1 / (1 - p)
"""

import struct

import triton
import triton.language as tl

from ._utils import autotune, cdiv, checked_outputs, tl_accumulate_dtype


@triton.jit
def _philox_uniforms(seed, counters):
    """The 4 uniforms in [0, 1) of each int64 counter: Philox4x32-10 of (lo, hi, 0, 0)."""
    lo = counters.to(tl.uint32)
    hi = (counters >> 32).to(tl.uint32)
    zero = lo * 0
    r0, r1, r2, r3 = tl.philox(seed, lo, hi, zero, zero)
    return (tl.uint_to_uniform_float(r0), tl.uint_to_uniform_float(r1),
            tl.uint_to_uniform_float(r2), tl.uint_to_uniform_float(r3))


@triton.jit
def unit_uniforms(seed, units):
    """Uniform of each unit (any int64 block): output units % 4 of counter units // 4."""
    u0, u1, u2, u3 = _philox_uniforms(seed, units // 4)
    lane = units % 4
    return tl.where(lane == 0, u0, tl.where(lane == 1, u1, tl.where(lane == 2, u2, u3)))


@triton.jit
def _block_uniforms(seed, first_unit, BLOCK: tl.constexpr):
    """Uniforms of units first_unit .. first_unit + BLOCK - 1 (first_unit a multiple of 4): one
    Philox call per 4 units, its outputs interleaved back into unit order."""
    counters = first_unit // 4 + tl.arange(0, BLOCK // 4).to(tl.int64)
    u0, u1, u2, u3 = _philox_uniforms(seed, counters)
    # join appends a minor dimension: [BLOCK // 4, 2, 2] with [n, j, i] = u(2 * j + i)
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK,))


@triton.jit
def tile_uniforms(seed, offs_m, first_n, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  ALIGNED: tl.constexpr):
    """Uniforms [BLOCK_M, BLOCK_N] of units m * N + n of a row-major [M, N] grid, for the int64
    rows offs_m and the columns first_n .. first_n + BLOCK_N - 1. ALIGNED (N and first_n
    multiples of 4): one Philox call per 4 units, as _block_uniforms; else one per unit."""
    if ALIGNED:
        counters = ((offs_m[:, None] * N + first_n) // 4
                    + tl.arange(0, BLOCK_N // 4).to(tl.int64)[None, :])
        u0, u1, u2, u3 = _philox_uniforms(seed, counters)
        return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (BLOCK_M, BLOCK_N))
    else:
        cols = first_n + tl.arange(0, BLOCK_N).to(tl.int64)
        return unit_uniforms(seed, offs_m[:, None] * N + cols[None, :])


@triton.jit
def noise_scale(scale_bits, COMPUTE: tl.constexpr):
    """The scale 1 / (1 - p), passed as the bits of a float64 (a float argument would be
    float32)."""
    return scale_bits.to(tl.float64, bitcast=True).to(COMPUTE)


_ELEMENT_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
    triton.Config({"BLOCK": 8192}, num_warps=16),
]


# restore_value: autotuning runs every config on the same buffers, and in place (out is x) each
# run would apply the noise again.
@autotune(_ELEMENT_CONFIGS, key=["numel"], bucket=["numel"], restore_value=["out_ptr"])
@triton.jit(do_not_specialize=["seed"])
def dropout_kernel(
    x_ptr, out_ptr,
    numel, seed, p, scale_bits,
    COMPUTE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[i] = x[i] * noise(i) over contiguous x and out (which may be the same tensor)."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    inside = offs < numel
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(COMPUTE)
    keep = _block_uniforms(seed, start, BLOCK) >= p
    factor = tl.where(keep, noise_scale(scale_bits, COMPUTE), 0.0)
    tl.store(out_ptr + offs, (x * factor).to(out_ptr.dtype.element_ty), mask=inside)


_CHANNEL_CONFIGS = [
    triton.Config({"BLOCK_U": 16, "BLOCK_C": 128}, num_warps=4),
    triton.Config({"BLOCK_U": 4, "BLOCK_C": 1024}, num_warps=4),
    triton.Config({"BLOCK_U": 64, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_U": 8, "BLOCK_C": 512}, num_warps=8),
]


@autotune(_CHANNEL_CONFIGS, key=["units", "channel_size"], bucket=["units"],
          restore_value=["out_ptr"])
@triton.jit(do_not_specialize=["seed"])
def channel_dropout_kernel(
    x_ptr, out_ptr,
    units, channel_size, seed, p, scale_bits,
    COMPUTE: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out[u, c] = x[u, c] * noise(u) over contiguous [units, channel_size] x and out; a 1-D
    grid of [BLOCK_U, BLOCK_C] tiles (the 2nd and 3rd grid dimensions stop at 65535)."""
    pid = tl.program_id(0).to(tl.int64)
    blocks_c = tl.cdiv(channel_size, BLOCK_C)
    offs_u = (pid // blocks_c) * BLOCK_U + tl.arange(0, BLOCK_U)
    offs_c = (pid % blocks_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    keep = unit_uniforms(seed, offs_u) >= p
    factor = tl.where(keep, noise_scale(scale_bits, COMPUTE), 0.0)
    offs = offs_u[:, None] * channel_size + offs_c[None, :]
    inside = (offs_u[:, None] < units) & (offs_c[None, :] < channel_size)
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(COMPUTE)
    tl.store(out_ptr + offs, (x * factor[:, None]).to(out_ptr.dtype.element_ty), mask=inside)


def noise_args(seed, p):
    """(seed, p, scale_bits) kernel arguments: the seed read from its CPU tensor (no device
    sync) and 1 / (1 - p) as float64 bits. p = 1 keeps no unit, so its scale is never applied;
    1.0 stands in for it and keeps scale_bits an int64 argument."""
    scale = 1.0 / (1.0 - p) if p < 1 else 1.0
    return int(seed), p, struct.unpack("<q", struct.pack("<d", scale))[0]


def _dropout_contiguous(x, out, seed, p, channel_size):
    """out = x * noise for contiguous x and out of the same shape (out may be x)."""
    numel = x.numel()
    if numel == 0:
        return out
    seed, p, scale_bits = noise_args(seed, p)
    compute = tl_accumulate_dtype(x.dtype)  # fp32 for fp16/bf16, as torch's CUDA dropout
    if channel_size == 1:
        dropout_kernel[lambda meta: (cdiv(numel, meta["BLOCK"]),)](
            x, out, numel, seed, p, scale_bits, COMPUTE=compute)
    else:
        units = numel // channel_size

        def grid(meta):
            return (cdiv(units, meta["BLOCK_U"]) * cdiv(channel_size, meta["BLOCK_C"]),)

        channel_dropout_kernel[grid](
            x, out, units, channel_size, seed, p, scale_bits, COMPUTE=compute)
    return out


def dropout_forward(input, seed, p, channel_size):
    """input [*] -> input * noise, contiguous [*]; seed a one-element int64 CPU tensor."""
    out = checked_outputs("dropout", input, seed, p, channel_size)
    # The noise follows the logical (row-major) order, whatever the input's strides.
    x = input.contiguous()
    return _dropout_contiguous(x, out, seed, p, channel_size)


def dropout_inplace(input, seed, p, channel_size):
    """input *= noise, in place (through a contiguous copy when input is not contiguous)."""
    checked_outputs("dropout_", input, seed, p, channel_size)
    if input.is_contiguous():
        _dropout_contiguous(input, input, seed, p, channel_size)
    else:
        input.copy_(dropout_forward(input, seed, p, channel_size))
