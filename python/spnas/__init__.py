"""spnas: Single-Path NAS in PyTorch.

    from spnas import SuperDepthwiseConv2d, SuperMBConv, SinglePathSuperNet, Architecture, RuntimeModel

Layers usable in your own networks (`layers`), search spaces and architectures as data
(`space`), the supernet (`supernet`), runtime models (`runtime`) and the search driver
(`search`); the `spnas` command is `spnas.cli`.
"""

from importlib import import_module

from .errors import SpnasError
from .space import OPS, Architecture, SearchSpace, get_space, register_space

# Loaded on first use (they import torch), so that the `spnas` command's --help stays fast.
_LAZY = {"SuperDepthwiseConv2d": "layers", "SuperMBConv": "layers", "RuntimeModel": "runtime",
         "SinglePathSuperNet": "supernet"}

__all__ = ["SuperDepthwiseConv2d", "SuperMBConv", "SinglePathSuperNet", "Architecture",
           "RuntimeModel", "SearchSpace", "register_space", "get_space", "OPS", "SpnasError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spnas' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
