"""fastops.nn modules refuse torch.jit.script with one clear error.

torch.jit.script calls ``__prepare_scriptable__`` on the module it is given and on every
submodule, before it compiles anything (torch.jit._script.call_prepare_scriptable_func), so a
fastops module anywhere in a model stops scripting there, with the same message on every
attempt (compiling forward would fail on the functional layer's Python checks and, on a second
attempt, with "Can't redefine method"). torch.jit.trace, torch.export and torch.compile do not
call it: they record the ops that run, which the fastops ops support.
"""

MESSAGE = (
    "{name} cannot be compiled by torch.jit.script: TorchScript is not supported by fastops.nn "
    "modules (their forward checks its arguments in Python before calling the fastops custom "
    "ops). Use torch.jit.trace(model, example_inputs), torch.export.export(model, args) or "
    "torch.compile(model) instead, or script fastops.unconvert(model), which has torch.nn "
    "layers again.")


def refuse_torchscript(self):
    """``__prepare_scriptable__`` of every fastops.nn module: raises RuntimeError."""
    cls = type(self)
    name = (f"fastops.nn.{cls.__name__}" if cls.__module__.startswith("fastops.nn")
            else f"{cls.__qualname__} (a fastops.nn module)")
    raise RuntimeError(MESSAGE.format(name=name))
