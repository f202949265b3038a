"""Helpers shared by the Triton launchers: autotuning, launch grids, fp32 dot precision."""

import os

import torch
import triton
import triton.language as tl

# Shared memory one block may use on sm_90 (H100 / H200): configs that need more are pruned
# before they are compiled (compiling them takes seconds and ends in OutOfResources).
MAX_SHARED_MEMORY = 232448


def interpreting():
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune_mode():
    """"all": time every config that survives pruning (the default on a GPU); "first": use the
    first one, untimed (the interpreter, tests that only check results: FASTOPS_AUTOTUNE=first)."""
    if interpreting():
        return "first"
    mode = os.environ.get("FASTOPS_AUTOTUNE", "all")
    if mode not in ("all", "first"):
        raise ValueError(f"FASTOPS_AUTOTUNE: expected 'all' or 'first', got {mode!r}")
    return mode


def size_bucket(n):
    """The power of two at or above n: autotuning keys hold sizes by bucket, so a new batch size
    (an epoch's last, partial batch) re-uses the tuning of its bucket."""
    return triton.next_power_of_2(max(int(n), 1))


class _BucketedCache(dict):
    """The autotuner's result cache, keyed with the sizes at ``positions`` bucketed."""

    def __init__(self, positions):
        super().__init__()
        self.positions = frozenset(positions)

    def _bucket(self, key):
        return tuple(size_bucket(v) if i in self.positions and isinstance(v, int) else v
                     for i, v in enumerate(key))

    def __contains__(self, key):
        return super().__contains__(self._bucket(key))

    def __getitem__(self, key):
        return super().__getitem__(self._bucket(key))

    def __setitem__(self, key, value):
        super().__setitem__(self._bucket(key), value)

    def get(self, key, default=None):
        return super().get(self._bucket(key), default)


def _untimed(kernel_call, quantiles=None, **kwargs):
    """do_bench for FASTOPS_AUTOTUNE=first: a single candidate needs no timing run."""
    return [0.0] * len(quantiles) if quantiles else 0.0


def autotune(configs, key, bucket=(), prune=None, shared_memory=None, **kwargs):
    """triton.autotune over ``configs``, keyed by the kernel arguments named in ``key`` (those
    also in ``bucket`` by size_bucket). Before anything is compiled, configs are pruned by
    ``prune(configs, args)`` (problem size) and by ``shared_memory(config, args)``
    (an upper bound of the bytes the config needs, checked against MAX_SHARED_MEMORY), where
    ``args`` maps every argument of the launch (constexprs included) by name; with
    autotune_mode() "first" only the first survivor is kept, and it is not timed."""
    mode = autotune_mode()

    def early_prune(candidates, named_args, **meta):
        args = {**named_args, **meta}  # tensor and size arguments, and the constexprs passed
        kept = prune(candidates, args) if prune else list(candidates)
        if shared_memory:
            kept = [c for c in kept if shared_memory(c, args) <= MAX_SHARED_MEMORY]
        if not kept:
            raise ValueError(f"no config of {candidates[0]} fits the problem or shared memory")
        return kept[:1] if mode == "first" else kept

    if mode == "first":
        kwargs["do_bench"] = _untimed

    def decorate(fn):
        tuner = triton.autotune(configs=configs, key=key,
                                prune_configs_by={"early_config_prune": early_prune}, **kwargs)(fn)
        tuner.cache = _BucketedCache(i for i, name in enumerate(key) if name in bucket)
        return tuner

    return decorate


def dot_shared_memory(a_ptr, b_ptr):
    """shared_memory estimate for a pipelined tl.dot of a [BLOCK_M, BLOCK_K] tile of tensor
    argument ``a_ptr`` by a [BLOCK_K, BLOCK_N] tile of ``b_ptr``: one buffer of both per stage."""
    def estimate(config, named_args):
        meta = config.kwargs
        per_stage = (meta["BLOCK_M"] * meta["BLOCK_K"] * named_args[a_ptr].element_size()
                     + meta["BLOCK_K"] * meta["BLOCK_N"] * named_args[b_ptr].element_size())
        return per_stage * max(config.num_stages, 1)
    return estimate


def _tf32_allowed(*settings):
    """Whether torch allows TF32 under its fp32_precision settings (torch >= 2.9), the most
    specific first, each "tf32", "ieee" or "none" (= ask the next one; none at all: IEEE).
    Reading the legacy flags instead raises once a user has set the new ones."""
    for setting in (*settings, torch.backends):
        precision = getattr(setting, "fp32_precision", "none")
        if precision != "none":
            return precision == "tf32"
    return False


def fp32_dot_precision(dtype, op="matmul"):
    """The ``input_precision`` of ``tl.dot`` that matches torch for float32: TF32 only where torch
    allows it for that kind of op. Matmuls (linear) follow torch.backends.cuda.matmul (IEEE by
    default, TF32 after torch.set_float32_matmul_precision("high")); convolutions follow cuDNN's
    setting (torch.backends.cudnn.conv, i.e. allow_tf32: TF32 by default), as torch's own conv2d
    on CUDA does."""
    if dtype != torch.float32:
        return "ieee"
    if not hasattr(torch.backends.cudnn, "conv"):  # torch < 2.9: only the legacy flags
        allowed = (torch.backends.cudnn.allow_tf32 if op == "conv"
                   else torch.get_float32_matmul_precision() != "highest")
    elif op == "conv":
        allowed = _tf32_allowed(torch.backends.cudnn.conv, torch.backends.cudnn)
    else:
        allowed = _tf32_allowed(torch.backends.cuda.matmul)
    return "tf32" if allowed else "ieee"


def cdiv(a, b):
    return triton.cdiv(a, b)


_META = torch._C.DispatchKeySet(torch._C.DispatchKey.Meta)


def checked_outputs(op, *args):
    """Runs fastops::<op>'s rules, its Meta kernel (csrc/<op>/<op>.cpp): every argument check,
    then the op's outputs allocated with the options of its inputs. Called with the launcher's
    own (CUDA) tensors, it returns the empty device tensors the kernels fill, with the shapes,
    dtypes and layouts every backend shares."""
    return getattr(torch.ops.fastops, op).default.redispatch(_META, *args)


def accumulate_dtype(dtype):
    """The dtype kernels accumulate in and keep statistics in: float64 for float64, else
    float32 (accumulate_type in csrc/shared/common.h)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_accumulate_dtype(dtype):
    """accumulate_dtype as a Triton dtype, for the kernels' ACC / COMPUTE constexprs."""
    return tl.float64 if dtype == torch.float64 else tl.float32
