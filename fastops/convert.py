"""fastops.convert: swap torch.nn layers for their fastops twins and fuse neighbours.

    convert(model, fuse=True, inplace=False, verbose=False) -> model on fastops layers
    unconvert(model, inplace=False)                         -> back to plain torch.nn

Both keep the user's model object and class (its ``forward``, other methods, attributes and
hooks): only submodules change. Layers are swapped in place of the originals (same parameters,
buffers, hooks and state_dict keys: every fastops module subclasses its torch.nn twin and adds
only settings such as ``activation``).

With ``fuse=True`` a Linear / Conv2d / BatchNorm1d/2d followed by an ``nn.ReLU`` module takes
the ReLU as its fused activation, and the ReLU's slot is kept by a :class:`FusedAway`
placeholder that passes its input through (so indices, attribute names and state_dict keys do
not move, and the user's ``forward`` runs as written):

- in an ``nn.Sequential``, a ReLU in the slot after the layer (and, after a Linear, a Dropout
  in the slot after that, folded into the Linear's epilogue), unless the traced ``forward`` also
  calls that ReLU object on other values and the slot is its only name (when it has another,
  such calls are taken to go through that one);
- in any ``forward`` that ``torch.fx`` can trace, an ``nn.ReLU`` module called on the layer's
  output, when every call of that ReLU module is on the output of a layer fused with it (one
  ReLU module shared by several layers, as in ``self.relu(self.fc1(x))``, is fine) and the
  module is registered in one place only.

A ``torch.relu`` / ``F.relu`` / ``Tensor.relu`` call in ``forward`` is left alone (removing it
would mean rewriting the user's ``forward``), and so is the layer before it.

The activation becomes a setting of the layer object, so a layer is fused only when every use
of that object is followed by a ReLU that convert removes: every slot of every ``nn.Sequential``
holding it (the same object may sit in several) and every call in the traced ``forward``. When
``forward`` cannot be traced, a layer that a module other than an ``nn.Sequential`` also holds
is left unfused, and so is every ReLU module outside a Sequential. Methods other than
``forward`` are not looked at (a fused ReLU module that another method calls passes its input
through). Hooks: a layer with forward or backward hooks is not fused (so
they keep seeing what torch's layer returns; forward pre-hooks, which see only its input, do
not count), nor one whose ReLU has hooks of any kind, nor any while global module hooks are
registered; a Dropout with hooks stays a module. Hooks registered on a fused layer after
``convert`` see its fused output.

Both report what they change as INFO records of the ``logging`` logger ``"fastops.convert"``
(one record per replaced, fused or restored layer, and one per layer followed by a ReLU that
stays unfused, with the reason: "not fused <name>: <why>"), shown once logging is configured
to show them, e.g. ``logging.basicConfig(level=logging.INFO)`` or
``logging.getLogger("fastops.convert").setLevel(logging.INFO)`` with a handler.
"""

import copy
import functools
import logging

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
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
# the layers that take a fused ReLU (Linear also the Dropout after it)
_FUSES_RELU = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
# relu calls in a traced forward, as the report names them (F.relu_ is torch.relu_)
_RELU_FUNCTIONS = {F.relu: "F.relu", torch.relu: "torch.relu", torch.relu_: "torch.relu_"}
_RELU_METHODS = ("relu", "relu_")


@functools.cache
def twins():
    """{torch.nn class: fastops.nn twin}."""
    return {torch_cls: getattr(fnn, name) for torch_cls, name in _TWIN_NAMES.items()}


@functools.cache
def _torch_classes():
    """{fastops.nn class: the torch.nn class it stands for}: the twins, and the fused classes
    built on them (LinearReLU -> nn.Linear, ...). Not user subclasses of fastops classes."""
    classes = (getattr(fnn, name) for name in fnn.__all__)
    found = {cls: next((base for base in cls.__mro__ if base in twins()), None) for cls in classes}
    return {cls: torch_cls for cls, torch_cls in found.items() if torch_cls is not None}


def _torch_of(module):
    """The torch.nn class a fastops module stands for, or None."""
    return _torch_classes().get(type(module))


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
    """Stands in for a ReLU (or a Dropout after it) that convert folded into the layers before
    it: a call returns its input [*] as is, and the slot keeps its name, so indices, attribute
    names and state_dict keys stay. ``original`` is the module it replaces and ``into`` the
    layers that now apply it, both for :func:`unconvert` (not registered: they have no state of
    their own here, and ``into`` is registered where it sits)."""

    def __init__(self, original):
        super().__init__()
        self.train(original.training)  # unconvert gives it back in the mode the model is then in
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "into", [])

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
    ``relu_module``: that nn.ReLU module. ``slot``: (prefix, nn.Sequential, layer slot, ReLU
    slot, Dropout slot or None) when it is the next slot of an nn.Sequential (only that slot
    becomes a placeholder), ``dropout`` the p of the fastops Dropout after it there; else the
    module is replaced wherever it is registered. ``node``: the call in the traced forward
    (None for slots of a Sequential that forward does not run, or when forward could not be
    traced)."""

    def __init__(self, layer, relu, why="", slot=None, dropout=None, node=None, followed=False,
                 relu_module=None):
        self.layer, self.relu, self.why, self.followed = layer, relu, why, followed or relu
        self.slot, self.dropout, self.node, self.relu_module = slot, dropout, node, relu_module


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
                           dropout=None if dropout is None else dropout.p, relu_module=after)
            uses[id(seq), name] = use
    return uses


def _relu_of(user, node, root):
    """How ``user`` applies ReLU to ``node``'s output: its nn.ReLU module, the call as the
    report names it ("F.relu(inplace=True)", "Tensor.relu_"), or None if it does not."""
    if not user.args or user.args[0] is not node:
        return None
    if user.op == "call_module" and len(user.args) == 1 and not user.kwargs:
        module = root.get_submodule(user.target)
        return module if type(module) is nn.ReLU else None
    if user.op == "call_function" and user.target in _RELU_FUNCTIONS:
        inplace = user.kwargs.get("inplace", user.args[1] if len(user.args) > 1 else False)
        return _RELU_FUNCTIONS[user.target] + ("(inplace=True)" if inplace else "")
    if user.op == "call_method" and user.target in _RELU_METHODS:
        return f"Tensor.{user.target}"
    return None


def _call_use(layer, node, root, place):
    """The _Use of a call of ``layer`` in the traced forward (``node``, at ``place``) whose
    output does not go to the next slot of its nn.Sequential."""
    relus = [relu for relu in (_relu_of(user, node, root) for user in node.users) if relu]
    if not relus:
        return _Use(layer, False, f"{place} is not followed by a ReLU")
    if len(node.users) > 1:
        return _Use(layer, False, "its output in forward goes elsewhere too, not only to the "
                                  "relu after it", followed=True)
    if isinstance(relus[0], str):
        return _Use(layer, False, f"the relu after it is a function call in forward "
                                  f"({relus[0]}), which convert cannot remove without rewriting "
                                  "forward; an nn.ReLU module there would be fused", followed=True)
    return _Use(layer, True, node=node, relu_module=relus[0])


def _trace(model, candidates):
    """{id(layer): [_Use]} for the candidate layers, {id(nn.ReLU module): [id(the fusable layer
    whose output each of its calls takes), or None]}, and why torch.fx could not trace
    ``model``'s forward (None when it could).

    Traced: each call forward makes, plus the Sequential slots that forward does not run. Not
    traced: each Sequential slot, plus a use that blocks fusion for each module other than an
    nn.Sequential that holds the layer (its forward may call it anyhow)."""
    slot_uses = _slot_uses(model, candidates)
    uses = {key: [] for key in candidates}
    relu_inputs = {}
    tracer = _LeafTracer()
    try:
        graph, error = tracer.trace(model), None
    except Exception as exc:  # untraceable forward (data-dependent control flow, ...)
        graph, error = None, (str(exc).splitlines() or [type(exc).__name__])[0]
    prefixes = {}
    for prefix, module in model.named_modules():
        prefixes.setdefault(id(module), f"{prefix}." if prefix else "")
    ran = set()
    for node in graph.nodes if graph is not None else ():
        if node.op != "call_module":
            continue
        module = tracer.root.get_submodule(node.target)
        if type(module) is nn.ReLU:
            source = node.args[0] if len(node.args) == 1 and not node.kwargs else None
            layer = (tracer.root.get_submodule(source.target)
                     if isinstance(source, torch.fx.Node) and source.op == "call_module"
                     and len(source.users) == 1 else None)
            relu_inputs.setdefault(id(module), []).append(
                id(layer) if id(layer) in candidates else None)
        if id(module) not in candidates:
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
                uses[id(module)].append(_Use(module, use.relu, use.why, use.slot, use.dropout,
                                             node, use.followed, use.relu_module))
                continue
        place = (f"a call of {node.target} in forward" if slot is None
                 else f"{prefixes[id(slot[0])]}{slot[1]}")
        uses[id(module)].append(_call_use(module, node, tracer.root, place))
    if graph is None:
        for parent in model.modules():
            if not _runs_slots_in_order(parent):
                for child in parent._modules.values():
                    if id(child) in candidates:
                        uses[id(child)].append(_Use(
                            child, False, f"{type(parent).__name__}.forward, which may call it, "
                                          "is not traceable by torch.fx"))
    for key, use in slot_uses.items():
        if key not in ran:
            uses[id(use.layer)].append(use)
    return uses, relu_inputs, error


def _why_relu_stays(use, bindings, relu_inputs, fused, names):
    """Why the nn.ReLU module after ``use`` cannot become a FusedAway, given the layers
    ``fused`` so far; None if it can. Forward's calls of it must all take the output of a fused
    layer (else one would lose its ReLU). A ReLU in an nn.Sequential slot is replaced in that
    slot only, so when it is registered elsewhere too, forward's other calls are taken to go
    through that other name."""
    relu = use.relu_module
    where = [qualified for _, _, qualified in bindings[id(relu)]]
    if len(where) > 1:
        return None if use.slot is not None else (
            f"the nn.ReLU module {where[0]} is also registered as {', '.join(where[1:])}")
    if _has_hooks(relu):
        return f"the nn.ReLU module {where[0]} has hooks"
    inputs = relu_inputs.get(id(relu), ())
    if None in inputs:
        return f"the nn.ReLU module {where[0]} is also called on other values in forward"
    other = next((key for key in inputs if key not in fused), None)
    if other is not None:
        return f"the nn.ReLU module {where[0]} also follows {names[other]}, which is not fused"
    return None


def _why_not_fused(candidates, uses, relu_inputs, bindings, names):
    """{id(layer): why it stays unfused (None: no ReLU follows it, nothing to report)}."""
    why_not = {}
    for key, layer in candidates.items():
        why = next((use.why for use in uses[key] if not use.relu), None)
        if not any(use.followed for use in uses[key]):
            why_not[key] = None
        elif why is None and _hooks_see_output(layer):
            why_not[key] = "its forward or backward hooks would see the ReLU's output"
        elif why is None and _global_hooks():
            why_not[key] = "global module hooks are registered (they would see the ReLU's output)"
        elif why is not None:
            why_not[key] = why
    # A ReLU module removed from forward must follow fused layers only, and a layer is fused
    # only if every ReLU module after it is removed: drop layers until both hold.
    fused = None
    while fused != (fused := set(candidates) - set(why_not)):
        for key in fused:
            why = next(filter(None, (_why_relu_stays(use, bindings, relu_inputs, fused, names)
                                     for use in uses[key])), None)
            if why is not None:
                why_not[key] = why
    return why_not


def _fuse_layer(layer, uses, bindings, name, placeholders, log):
    """Gives ``layer`` (its qualified ``name``) the ReLU of each of its ``uses``, and the
    Dropout after it where every use has one with the same p, and puts a FusedAway in their
    slots (``placeholders``: {(id(parent), slot name): FusedAway}, shared by the layers)."""
    dropouts = {use.dropout for use in uses}
    dropout = dropouts.pop() if len(dropouts) == 1 else None
    layer.activation = "relu"
    if dropout is not None:
        layer.dropout = dropout
    lines = {}  # where the layer is -> what was fused away after it there
    for use in uses:
        if use.slot is None:
            slots = bindings[id(use.relu_module)]  # one: _why_relu_stays checked it
            lines[name] = [slots[0][2]]
        else:
            prefix, seq, layer_slot, relu_slot, dropout_slot = use.slot
            where = f"{prefix}." if prefix else ""
            slots = [(seq, relu_slot, where + relu_slot)]
            if dropout is not None:
                slots.append((seq, dropout_slot, where + dropout_slot))
            lines[where + layer_slot] = [qualified for _, _, qualified in slots]
        for parent, slot, _ in slots:
            placeholder = placeholders.get((id(parent), slot))
            if placeholder is None:
                placeholder = FusedAway(parent._modules[slot])
                placeholders[id(parent), slot] = parent._modules[slot] = placeholder
            if not any(fused is layer for fused in placeholder.into):
                placeholder.into.append(layer)
    settings = "activation='relu'" + ("" if dropout is None else f", dropout={dropout}")
    for where, removed in lines.items():
        log.append(f"fused {where} with {', '.join(removed)}: "
                   f"fastops.nn.{type(layer).__name__}({settings})")


def _fuse(model, log):
    """Fuses the ReLU after each Linear / Conv2d / BatchNorm whose every use (each slot of
    every nn.Sequential that holds the object, each call forward makes) is followed by a ReLU
    module that convert can remove, and whose output no hook sees, in place.

    A ReLU in the next slot of an nn.Sequential becomes a FusedAway placeholder (so does a
    Dropout after it, folded into a Linear when every use has one with the same p); so does an
    nn.ReLU module that forward calls only on the outputs of fused layers."""
    names = {}  # id(module) -> its (first) qualified name
    bindings = {}  # id(module) -> [(parent, slot name, qualified name)] where it is registered
    for prefix, parent in model.named_modules():
        names.setdefault(id(parent), prefix or type(model).__name__)
        for slot, child in parent._modules.items():
            if child is not None:
                bindings.setdefault(id(child), []).append(
                    (parent, slot, f"{prefix}.{slot}" if prefix else slot))
    candidates = {id(m): m for m in model.modules()
                  if _torch_of(m) in _FUSES_RELU and m.activation is None}
    if not candidates:
        return
    uses, relu_inputs, error = _trace(model, candidates)
    if error is not None:
        log.append(f"not fused in {type(model).__name__}.forward: it is not traceable by "
                   f"torch.fx ({error}); only layers in nn.Sequential slots are fused")
    why_not = _why_not_fused(candidates, uses, relu_inputs, bindings, names)
    log.extend(f"not fused {names[key]}: {why}" for key, why in why_not.items() if why)
    placeholders = {}
    for key, layer in candidates.items():
        if key not in why_not:
            _fuse_layer(layer, uses[key], bindings, names[key], placeholders, log)


def convert(model, fuse=True, inplace=False, verbose=False):
    """Returns ``model`` (the same class and object, or a deep copy of it when
    ``inplace=False``) with every nn.Linear, Conv2d, MaxPool2d, BatchNorm1d/2d,
    Dropout/Dropout1d/2d/3d, CrossEntropyLoss and LinearCrossEntropyLoss (torch >= 2.13)
    submodule replaced by its fastops twin (and ReLU/Dropout modules fused away when ``fuse``,
    as the module docstring says). Unknown layers are left alone.

    Each replacement and fusion is an INFO record of the ``"fastops.convert"`` logger
    ("replaced 1: nn.Linear -> fastops.nn.Linear", "fused 1 with 2, 3: ...", "not fused 1:
    <why>" for a layer followed by a ReLU in some use that convert leaves unfused, or "nothing
    to replace"). ``verbose=True`` also prints them to stdout as one summary (what convert did
    by default before it logged); the default ``False`` prints nothing."""
    if not inplace:
        model = copy.deepcopy(model)
    log = []
    _swap_layers(model, log)
    if fuse:
        _fuse(model, log)
    for line in log or ["nothing to replace"]:
        logger.info(line)
    if verbose:
        print("fastops.convert:\n  " + ("\n  ".join(log) if log else "nothing to replace"))
    return model


def _check_unconvertible(model):
    """Raises ValueError for a fastops layer with a fused ReLU or dropout that no FusedAway of
    ``model`` stands for (built so by the user, not by convert): torch.nn has no such layer."""
    restorable = {id(layer) for module in model.modules() if isinstance(module, FusedAway)
                  for layer in module.into}
    for name, module in model.named_modules():
        torch_cls = _torch_of(module)
        if torch_cls is None or id(module) in restorable:
            continue
        fused = ["nn.ReLU()"] if getattr(module, "activation", None) == "relu" else []
        fused += [f"nn.Dropout({module.dropout})"] if getattr(module, "dropout", 0.0) else []
        if fused:
            raise ValueError(
                f"fastops.unconvert: {name or type(model).__name__} (fastops.nn.{module!r}) has "
                f"{' and '.join(fused)} fused into it, which no torch.nn layer has, and convert "
                "did not fuse it (no placeholder of the model stands for it): write "
                f"nn.{torch_cls.__name__} followed by {', '.join(fused)} instead")


def unconvert(model, inplace=False):
    """The inverse of :func:`convert`: the same model (or a deep copy when ``inplace=False``)
    on torch.nn layers only, with the fused ReLU / Dropout modules back in their slots (in the
    model's train / eval mode). Each restored layer is an INFO record of the
    ``"fastops.convert"`` logger. Raises ValueError, changing nothing, for a fastops layer with
    a fused activation or dropout that convert did not fuse."""
    _check_unconvertible(model)
    if not inplace:
        model = copy.deepcopy(model)
    for prefix, module in list(model.named_modules()):
        where = f"{prefix}." if prefix else ""
        for name, child in list(module._modules.items()):
            if isinstance(child, FusedAway):
                module._modules[name] = child.original.train(child.training)
                original = _torch_of(child.original) or type(child.original)
                logger.info("restored %s%s: nn.%s", where, name, original.__name__)
    # after the placeholders: the Dropouts they held are fastops twins too
    for prefix, module in model.named_modules():
        torch_cls = _torch_of(module)
        if torch_cls is not None:
            for setting in ("activation", "dropout"):
                module.__dict__.pop(setting, None)
            logger.info("restored %s: fastops.nn.%s -> nn.%s", prefix or type(model).__name__,
                        type(module).__name__, torch_cls.__name__)
            module.__class__ = torch_cls
    return model
