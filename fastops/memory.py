"""Memory accounting used by the benchmarks and tests."""

import torch


def saved_tensor_bytes(fn, *args, **kwargs):
    """Runs ``fn(*args, **kwargs)`` and returns ``(result, bytes)``: the bytes of the distinct
    tensor storages that autograd saved for backward while it ran (what backward keeps alive
    beyond the inputs the caller already holds is included too: that is what training pays)."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn(*args, **kwargs)
    return result, sum(storages.values())
