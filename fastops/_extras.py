"""The optional dependencies of the training command and the benchmark suite, by the pip extra
that installs them (pyproject.toml's [project.optional-dependencies]).

A missing one raises :class:`MissingExtra`, one line naming the extra to install, instead of a
``ModuleNotFoundError`` from deep inside the command."""

import importlib.util

# extra -> the modules it provides (import names)
EXTRAS = {
    "models": ("tqdm", "sklearn", "matplotlib"),
    "bench": ("pytest", "pytest_benchmark", "matplotlib"),
}
# import name -> pip name, where they differ
_PIP_NAMES = {"sklearn": "scikit-learn", "pytest_benchmark": "pytest-benchmark"}


class MissingExtra(ModuleNotFoundError):
    """An optional dependency of ``what`` is not installed."""


def require(extra, what):
    """Raises :class:`MissingExtra` unless every module of ``extra`` is importable."""
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        packages = ", ".join(_PIP_NAMES.get(name, name) for name in missing)
        raise MissingExtra(f"{what} needs {packages}, not installed here: "
                           f"pip install 'fastops[{extra}]'", name=missing[0])
