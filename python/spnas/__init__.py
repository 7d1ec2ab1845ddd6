"""spnas: Single-Path NAS in PyTorch.

    from spnas import SuperDepthwiseConv2d, SuperMBConv, SinglePathSuperNet, Architecture, RuntimeModel

Layers usable in your own networks (`layers`), search spaces and architectures as data
(`space`), the supernet (`supernet`), runtime models (`runtime`) and the search driver
(`search`); the `spnas` command is `spnas.cli`.
"""

from .errors import SpnasError
from .layers import SuperDepthwiseConv2d, SuperMBConv
from .runtime import RuntimeModel
from .space import OPS, Architecture, SearchSpace, get_space, register_space
from .supernet import SinglePathSuperNet

__all__ = ["SuperDepthwiseConv2d", "SuperMBConv", "SinglePathSuperNet", "Architecture",
           "RuntimeModel", "SearchSpace", "register_space", "get_space", "OPS", "SpnasError"]
__version__ = "0.1.0"
