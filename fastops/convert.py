"""fastops.convert: swap torch.nn layers for their fastops twins and fuse neighbours.

    convert(model, fuse=True, inplace=False, verbose=False) -> model on fastops layers
    unconvert(model, inplace=False)                         -> back to plain torch.nn

Layers are swapped in place of the originals (same parameters, buffers, hooks and state_dict
keys: every fastops module subclasses its torch.nn twin and adds only settings such as
``activation``). With ``fuse=True`` a ReLU (and a Dropout after it) that directly follows a
fusable layer in an ``nn.Sequential`` is folded into that layer and its slot is kept by a
:class:`FusedAway` placeholder, so positions and state_dict keys do not move. In a module whose
``forward`` calls ``F.relu``/``torch.relu`` on a fusable layer's output, the call is fused when
``torch.fx`` can trace the module (the result is then a ``torch.fx.GraphModule``).

Both report what they change as INFO records of the ``logging`` logger ``"fastops.convert"``
(one record per replaced, fused or restored layer), shown once logging is configured to show
them, e.g. ``logging.basicConfig(level=logging.INFO)`` or
``logging.getLogger("fastops.convert").setLevel(logging.INFO)`` with a handler.
"""

import copy
import functools
import logging

import torch
import torch.fx
from torch import nn

from . import nn as fnn

logger = logging.getLogger(__name__)  # "fastops.convert"

# torch.nn class -> name of its fastops twin; exact types only, so user subclasses (with their
# own forward) are left alone.
_TWIN_NAMES = {
    nn.Linear: "Linear",
    nn.Conv2d: "Conv2d",
    nn.MaxPool2d: "MaxPool2d",
    nn.BatchNorm1d: "BatchNorm1d",
    nn.BatchNorm2d: "BatchNorm2d",
    nn.Dropout: "Dropout",
    nn.Dropout1d: "Dropout1d",
    nn.Dropout2d: "Dropout2d",
    nn.Dropout3d: "Dropout3d",
    nn.CrossEntropyLoss: "CrossEntropyLoss",
}
if hasattr(nn, "LinearCrossEntropyLoss"):  # torch >= 2.13
    _TWIN_NAMES[nn.LinearCrossEntropyLoss] = "LinearCrossEntropyLoss"
_RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu)


@functools.cache
def twins():
    """{torch.nn class: fastops.nn twin}."""
    return {torch_cls: getattr(fnn, name) for torch_cls, name in _TWIN_NAMES.items()}


def _torch_of(module):
    """The torch.nn class a fastops module twins, or None."""
    return next((t for t, twin in twins().items() if type(module) is twin), None)


def _fuses_relu(module):
    """Layers that take a fused activation (Linear also the dropout after the ReLU)."""
    return isinstance(module, tuple(twins()[c] for c in (nn.Linear, nn.Conv2d, nn.BatchNorm1d,
                                                          nn.BatchNorm2d)))


class _LeafTracer(torch.fx.Tracer):
    """Keeps fastops layers as call_module nodes (fx only treats torch.nn's own as leaves)."""

    def is_leaf_module(self, module, qualified_name):
        return _torch_of(module) is not None or super().is_leaf_module(module, qualified_name)


class FusedAway(nn.Identity):
    """Keeps the slot of a layer fused into its predecessor (so indices and state_dict keys
    stay), and the original layer for :func:`unconvert` (not registered: it has no state)."""

    def __init__(self, original):
        super().__init__()
        object.__setattr__(self, "original", original)

    def extra_repr(self):
        return f"fused: {self.original}"


def _swap_layers(model, log):
    for name, module in model.named_modules():
        twin = twins().get(type(module))
        if twin is not None:
            log.append(f"replaced {name or type(model).__name__}: nn.{type(module).__name__} -> "
                       f"fastops.nn.{twin.__name__}")
            module.__class__ = twin


def _fuse_sequentials(model, log):
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        i = 0
        while i < len(names):
            layer = seq._modules[names[i]]
            follower = seq._modules[names[i + 1]] if i + 1 < len(names) else None
            if _fuses_relu(layer) and layer.activation is None and type(follower) is nn.ReLU:
                layer.activation = "relu"
                seq._modules[names[i + 1]] = FusedAway(follower)
                fused = [names[i + 1]]
                after = seq._modules[names[i + 2]] if i + 2 < len(names) else None
                if isinstance(layer, twins()[nn.Linear]) and isinstance(after, twins()[nn.Dropout]):
                    layer.dropout = after.p
                    seq._modules[names[i + 2]] = FusedAway(after)
                    fused.append(names[i + 2])
                where = f"{prefix}." if prefix else ""
                log.append(f"fused {where}{names[i]} with {', '.join(where + n for n in fused)}: "
                           f"fastops.nn.{type(layer).__name__}(activation='relu'"
                           + (f", dropout={layer.dropout})" if len(fused) == 2 else ")"))
                i += len(fused)
            i += 1


def _fuse_traced_relu(model, log):
    """Fuses relu(layer(x)) calls in a traceable forward; returns the (new) model."""
    if isinstance(model, nn.Sequential) or not any(_fuses_relu(m) for m in model.modules()):
        return model
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # untraceable forward (data-dependent control flow, ...): leave it
        return model
    traced = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    fused = False
    for node in list(traced.graph.nodes):
        is_relu = (node.op == "call_function" and node.target in _RELU_FUNCTIONS
                   and not node.kwargs.get("inplace", False))
        source = node.args[0] if is_relu else None
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and len(source.users) == 1):
            continue
        layer = traced.get_submodule(source.target)
        if _fuses_relu(layer) and layer.activation is None:
            layer.activation = "relu"
            node.replace_all_uses_with(source)
            traced.graph.erase_node(node)
            log.append(f"fused {source.target} with the relu in forward (torch.fx)")
            fused = True
    if not fused:
        return model
    # GraphModule keeps only what forward uses: carry over the rest so state_dict keys stay.
    for name, child in model.named_children():
        if not hasattr(traced, name):
            traced.add_submodule(name, child)
    for name, parameter in model._parameters.items():
        if parameter is not None and not hasattr(traced, name):
            traced.register_parameter(name, parameter)
    for name, buffer in model._buffers.items():
        if buffer is not None and not hasattr(traced, name):
            traced.register_buffer(name, buffer)
    traced.recompile()
    return traced


def convert(model, fuse=True, inplace=False, verbose=False):
    """Returns ``model`` with every nn.Linear, Conv2d, MaxPool2d, BatchNorm1d/2d,
    Dropout/Dropout1d/2d/3d, CrossEntropyLoss and LinearCrossEntropyLoss (torch >= 2.13)
    replaced by its fastops twin (and ReLU/Dropout fused away when ``fuse``).
    ``inplace=False`` works on a deep copy; unknown layers are left alone.

    Each replacement and fusion is an INFO record of the ``"fastops.convert"`` logger
    ("replaced 1: nn.Linear -> fastops.nn.Linear", "fused 1 with 2, 3: ...", or "nothing to
    replace"). ``verbose=True`` also prints them to stdout as one summary (what convert did by
    default before it logged); the default ``False`` prints nothing."""
    if not inplace:
        model = copy.deepcopy(model)
    log = []
    _swap_layers(model, log)
    if fuse:
        _fuse_sequentials(model, log)
        model = _fuse_traced_relu(model, log)
    for line in log or ["nothing to replace"]:
        logger.info(line)
    if verbose:
        print("fastops.convert:\n  " + ("\n  ".join(log) if log else "nothing to replace"))
    return model


def unconvert(model, inplace=False):
    """The inverse of :func:`convert`: plain torch.nn layers again, fused ReLU/Dropout restored
    (as modules in a Sequential, as relu calls in a traced forward). Each restored layer is an
    INFO record of the ``"fastops.convert"`` logger."""
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, torch.fx.GraphModule):
        for node in list(model.graph.nodes):
            if node.op != "call_module":
                continue
            layer = model.get_submodule(node.target)
            if _fuses_relu(layer) and layer.activation == "relu":
                with model.graph.inserting_after(node):
                    relu = model.graph.call_function(torch.relu, (node,))
                node.replace_all_uses_with(relu, delete_user_cb=lambda user: user is not relu)
                logger.info("restored the relu after %s in forward (torch.fx)", node.target)
        model.recompile()
    for prefix, module in list(model.named_modules()):
        where = f"{prefix}." if prefix else ""
        for name, child in list(module._modules.items()):
            if isinstance(child, FusedAway):
                module._modules[name] = child.original
                logger.info("restored %s%s: nn.%s", where, name, type(child.original).__name__)
        torch_cls = _torch_of(module)
        if torch_cls is not None:
            for setting in ("activation", "dropout"):
                module.__dict__.pop(setting, None)
            logger.info("restored %s: fastops.nn.%s -> nn.%s", prefix or type(model).__name__,
                        type(module).__name__, torch_cls.__name__)
            module.__class__ = torch_cls
    return model
