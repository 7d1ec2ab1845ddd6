"""spnas: Single-Path NAS in PyTorch.

    from spnas import SuperDepthwiseConv2d, SuperMBConv, SinglePathSuperNet, Architecture, RuntimeModel

Layers usable in your own networks (`layers`), search spaces and architectures as data
(`space`), the supernet (`supernet`), runtime models (`runtime`) and the search driver
(`search`); the `spnas` command is `spnas.cli`.
"""

from .errors import SpnasError
from .lazy import lazy_names
from .space import OPS, Architecture, SearchSpace, get_space, register_space

# Loaded on first use (they import torch), so that the `spnas` command's --help stays fast.
_LAZY = {"SuperDepthwiseConv2d": "layers", "SuperMBConv": "layers", "build_child": "layers",
         "RuntimeModel": "runtime",
         "SinglePathSuperNet": "supernet"}

__all__ = ["SuperDepthwiseConv2d", "SuperMBConv", "SinglePathSuperNet", "Architecture", "build_child",
           "RuntimeModel", "SearchSpace", "register_space", "get_space", "OPS", "SpnasError"]
__version__ = "0.1.0"


__getattr__ = lazy_names(__name__, _LAZY, globals())


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
