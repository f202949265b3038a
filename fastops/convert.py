"""fastops.convert: swap torch.nn layers for their fastops twins and fuse neighbours.

    convert(model, fuse=True, inplace=False, verbose=False) -> model on fastops layers
    unconvert(model, inplace=False)                         -> back to plain torch.nn

Layers are swapped in place of the originals (same parameters, buffers, hooks and state_dict
keys: every fastops module subclasses its torch.nn twin and adds only settings such as
``activation``). With ``fuse=True`` a ReLU (and a Dropout after it) that directly follows a
fusable layer in an ``nn.Sequential`` is folded into that layer and its slot is kept by a
:class:`FusedAway` placeholder, so positions and state_dict keys do not move. In a module whose
``forward`` calls ``F.relu``/``torch.relu`` (or an ``nn.ReLU`` module) on a fusable layer's
output, the call is fused when ``torch.fx`` can trace the module (the result is then a
``torch.fx.GraphModule``; never for an ``nn.Sequential`` model).

The activation becomes a setting of the layer object, so a layer is fused only when every use
of that object is followed by a ReLU: every slot of every ``nn.Sequential`` holding it (the same
object may sit in several) and every call in the traced ``forward``. When ``forward`` cannot be
traced, a layer that a module other than an ``nn.Sequential`` also holds is left unfused.
Methods other than ``forward`` are not looked at. Hooks: a layer with forward or backward hooks
is not fused (so they keep seeing what torch's layer returns; forward pre-hooks, which see only
its input, do not count), nor one whose ReLU has hooks of any kind, nor any while global module
hooks are registered; a Dropout with hooks stays a module. Hooks registered on a fused layer
after ``convert`` see its fused output. A layer left unfused for
one of these reasons is reported ("not fused <name>: <why>").

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
from torch.nn.modules import module as _torch_module

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


def _runs_slots_in_order(module):
    """nn.Sequential's own forward: each slot once, in order, on the previous slot's output."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _global_hooks():
    return any(getattr(_torch_module, name, None) for name in (
        "_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
        "_global_backward_hooks"))


def _hooks_see_output(layer):
    """Hooks that would see a fused layer's output (or its gradient): after fusion they would
    get the ReLU's output instead of what torch's layer returns."""
    return bool(layer._forward_hooks or layer._backward_hooks or layer._backward_pre_hooks)


def _has_hooks(module):
    """Any hook: a ReLU or Dropout fused away is not called, so none of its hooks would run."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_hooks
                or module._backward_pre_hooks)


class _LeafTracer(torch.fx.Tracer):
    """Keeps fastops layers as call_module nodes (fx only treats torch.nn's own as leaves), and
    notes which calls an nn.Sequential's forward made: ``slots[node] = (sequential, slot name)``.
    """

    def trace(self, root, concrete_args=None):
        self.slots = {}
        self._callers = [[root, 0]]  # the modules whose forward runs, and their next slot
        return super().trace(root, concrete_args)

    def is_leaf_module(self, module, qualified_name):
        return _torch_of(module) is not None or super().is_leaf_module(module, qualified_name)

    def call_module(self, module, forward, args, kwargs):
        caller = self._callers[-1]
        slot = None
        if _runs_slots_in_order(caller[0]):
            names = list(caller[0]._modules)
            if caller[1] < len(names) and caller[0]._modules[names[caller[1]]] is module:
                slot = (caller[0], names[caller[1]])
            caller[1] += 1
        self._callers.append([module, 0])
        try:
            result = super().call_module(module, forward, args, kwargs)
        finally:
            self._callers.pop()
        node = getattr(result, "node", None)
        if (slot is not None and isinstance(node, torch.fx.Node) and node.op == "call_module"
                and self.root.get_submodule(node.target) is module):
            self.slots[node] = slot
        return result


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


class _Use:
    """One use of a fusable layer. ``relu``: a ReLU that convert can remove follows it there
    (else ``why`` says why not; ``followed``: a ReLU follows that convert cannot remove).
    ``slot``: (prefix, nn.Sequential, layer slot, ReLU slot, Dropout slot or None) when that
    ReLU is the next slot of an nn.Sequential, ``dropout`` the p of the fastops Dropout after it
    there. ``node``: the call in the traced forward (None for slots of a Sequential that forward
    does not run, or when forward could not be traced)."""

    def __init__(self, layer, relu, why="", slot=None, dropout=None, node=None, followed=False):
        self.layer, self.relu, self.why, self.followed = layer, relu, why, followed or relu
        self.slot, self.dropout, self.node = slot, dropout, node


def _slot_uses(model, candidates):
    """{(id(Sequential), slot name): _Use} for every slot holding a candidate layer, in every
    nn.Sequential of the model (each object once, however many places hold it)."""
    uses = {}
    for prefix, seq in model.named_modules():
        if not _runs_slots_in_order(seq):
            continue
        names = list(seq._modules)
        where = f"{prefix}." if prefix else ""
        for i, name in enumerate(names):
            layer = seq._modules[name]
            if id(layer) not in candidates:
                continue
            after = seq._modules[names[i + 1]] if i + 1 < len(names) else None
            if type(after) is not nn.ReLU:
                use = _Use(layer, False, f"{where}{name} is not followed by a ReLU")
            elif _has_hooks(after):
                use = _Use(layer, False, f"the ReLU after {where}{name} has hooks", followed=True)
            else:
                dropout = seq._modules[names[i + 2]] if i + 2 < len(names) else None
                if not (isinstance(layer, twins()[nn.Linear])
                        and isinstance(dropout, twins()[nn.Dropout]) and not _has_hooks(dropout)):
                    dropout = None
                use = _Use(layer, True, slot=(prefix, seq, name, names[i + 1],
                                              None if dropout is None else names[i + 2]),
                           dropout=None if dropout is None else dropout.p)
            uses[id(seq), name] = use
    return uses


def _relu_after(node, root):
    """The node that applies a removable ReLU to ``node``'s output and is its only user, or
    None."""
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    if not user.args or user.args[0] is not node:
        return None
    if user.op == "call_function" and user.target in _RELU_FUNCTIONS:
        inplace = user.kwargs.get("inplace", user.args[1] if len(user.args) > 1 else False)
        return None if inplace or len(user.args) > 2 else user
    if user.op == "call_module" and len(user.args) == 1 and not user.kwargs:
        module = root.get_submodule(user.target)
        if type(module) is nn.ReLU and not _has_hooks(module):
            return user
    return None


def _uses(model, candidates):
    """{id(layer): [_Use]} for the candidate layers, and the tracer and graph of ``model``'s
    forward (graph None when torch.fx cannot trace it).

    Traced: each call forward makes, plus the Sequential slots that forward does not run. Not
    traced: each Sequential slot, plus a use that blocks fusion for each module other than an
    nn.Sequential that holds the layer (its forward may call it anyhow)."""
    slot_uses = _slot_uses(model, candidates)
    uses = {key: [] for key in candidates}
    tracer = _LeafTracer()
    try:
        graph = tracer.trace(model)
    except Exception:  # untraceable forward (data-dependent control flow, ...)
        graph = None
    prefixes = {}
    for prefix, module in model.named_modules():
        prefixes.setdefault(id(module), f"{prefix}." if prefix else "")
    ran = set()
    for node in graph.nodes if graph is not None else ():
        if node.op != "call_module":
            continue
        layer = tracer.root.get_submodule(node.target)
        if id(layer) not in candidates:
            continue
        slot = tracer.slots.get(node)
        if slot is not None:
            ran.add((id(slot[0]), slot[1]))
            names = list(slot[0]._modules)
            next_names = names[names.index(slot[1]) + 1:][:1]
            user = next(iter(node.users)) if len(node.users) == 1 else None
            user_slot = tracer.slots.get(user)
            if user_slot is not None and user_slot[0] is slot[0] and [user_slot[1]] == next_names:
                use = slot_uses[id(slot[0]), slot[1]]  # a ReLU (or not) in the next slot
                uses[id(layer)].append(_Use(layer, use.relu, use.why, use.slot, use.dropout, node,
                                            use.followed))
                continue
        if _relu_after(node, tracer.root) is None:
            place = (f"a call of {node.target} in forward" if slot is None
                     else f"{prefixes[id(slot[0])]}{slot[1]}")
            uses[id(layer)].append(_Use(layer, False, f"{place} is not followed by a ReLU"))
        elif isinstance(model, nn.Sequential):  # rewriting forward would make it a GraphModule
            uses[id(layer)].append(_Use(
                layer, False, f"the relu after {node.target} is not the next slot of an "
                              "nn.Sequential, and convert does not rewrite an nn.Sequential's "
                              "forward", followed=True))
        else:
            uses[id(layer)].append(_Use(layer, True, node=node))
    if graph is None:
        for parent in model.modules():
            if not _runs_slots_in_order(parent):
                for child in parent._modules.values():
                    if id(child) in candidates:
                        uses[id(child)].append(_Use(
                            child, False, f"{type(parent).__name__}.forward, which may call it, "
                                          "cannot be traced (torch.fx)"))
    for key, use in slot_uses.items():
        if key not in ran:
            uses[id(use.layer)].append(use)
    return uses, tracer, graph


def _fuse(model, log):
    """Fuses the ReLU after each Linear / Conv2d / BatchNorm whose every use (each slot of
    every nn.Sequential that holds the object, each call forward makes) is followed by a ReLU
    and whose output no hook sees. Returns the (new) model.

    A ReLU in the next slot of an nn.Sequential becomes a FusedAway placeholder (so does a
    Dropout after it, folded into a Linear when every use has one with the same p). A relu
    elsewhere in a traced forward is removed from the graph, and the model becomes a
    torch.fx.GraphModule (never for an nn.Sequential model: the layer then stays unfused)."""
    qualified = {}
    for name, module in model.named_modules():
        qualified.setdefault(id(module), name or type(model).__name__)
    candidates = {id(m): m for m in model.modules() if _fuses_relu(m) and m.activation is None}
    if not candidates:
        return model
    uses, tracer, graph = _uses(model, candidates)
    fused = {}  # id(layer) -> p of the Dropout fused with it, or None
    for key, layer in candidates.items():
        if not any(use.followed for use in uses[key]):
            continue  # no ReLU after it anywhere: nothing to fuse, nothing to report
        why = next((use.why for use in uses[key] if not use.relu), None)
        if why is None and _hooks_see_output(layer):
            why = "its forward or backward hooks would see the ReLU's output"
        if why is None and _global_hooks():
            why = "global module hooks are registered (they would see the ReLU's output)"
        if why is not None:
            log.append(f"not fused {qualified[key]}: {why}")
            continue
        dropouts = {use.dropout for use in uses[key]}
        fused[key] = dropouts.pop() if len(dropouts) == 1 else None
        layer.activation = "relu"
        if fused[key] is not None:
            layer.dropout = fused[key]
    rewrite = False
    done = set()
    for key, dropout in fused.items():
        layer = candidates[key]
        for use in uses[key]:
            if use.slot is None:
                rewrite = True
                log.append(f"fused {use.node.target} with the relu in forward (torch.fx)")
                continue
            prefix, seq, layer_slot, relu_slot, dropout_slot = use.slot
            if (id(seq), relu_slot) in done:  # a Sequential that forward runs more than once
                continue
            done.add((id(seq), relu_slot))
            removed = [relu_slot] + ([dropout_slot] if dropout is not None else [])
            for name in removed:
                seq._modules[name] = FusedAway(seq._modules[name])
            where = f"{prefix}." if prefix else ""
            log.append(f"fused {where}{layer_slot} with {', '.join(where + n for n in removed)}: "
                       f"fastops.nn.{type(layer).__name__}(activation='relu'"
                       + (f", dropout={dropout})" if dropout is not None else ")"))
    if not rewrite:
        return model
    # The model becomes its traced forward, which calls the layers directly: remove the relu
    # (and a fused Dropout) after every call of a fused layer from the graph.
    for key, dropout in fused.items():
        for use in uses[key]:
            if use.node is None:
                continue
            removed = [next(iter(use.node.users))]
            if dropout is not None:
                removed.insert(0, next(iter(removed[0].users)))
            for node in removed:
                node.replace_all_uses_with(use.node)
                graph.erase_node(node)
    traced = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
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
    ("replaced 1: nn.Linear -> fastops.nn.Linear", "fused 1 with 2, 3: ...", "not fused 1:
    <why>" for a layer followed by a ReLU in some use that convert leaves unfused, as the module
    docstring says, or "nothing to replace"). ``verbose=True`` also prints them to stdout as one
    summary (what convert did by default before it logged); the default ``False`` prints
    nothing."""
    if not inplace:
        model = copy.deepcopy(model)
    log = []
    _swap_layers(model, log)
    if fuse:
        model = _fuse(model, log)
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
