import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for path in (ROOT, os.path.join(ROOT, "python")):
    if path not in sys.path:
        sys.path.insert(0, path)

# Tests share a 2-core machine: one thread per process keeps them fast and repeatable.
torch.set_num_threads(1)


@pytest.fixture
def env():
    """Environment for subprocesses running the spnas command from this source tree."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python"), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    return e
