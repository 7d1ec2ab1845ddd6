"""Names of a package loaded on first use (PEP 562): the ones that import torch, so that
importing the package for the `spnas` command's --help stays fast."""

from __future__ import annotations

from importlib import import_module


def lazy_names(package: str, table: dict[str, str], namespace: dict):
    """A module __getattr__ that imports table[name] (a submodule) on first access to name."""

    def __getattr__(name: str):
        if name in table:
            value = getattr(import_module(f".{table[name]}", package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
