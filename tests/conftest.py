"""For the whole test session: outputs of the compiled CPU op poisoned, and whatever the tests
and their subprocesses write to temp folders (Inductor's compile cache, torchrun's files) under
pytest's own temp folder, which pytest removes afterwards (pyproject: only failed tests' folders
are kept)."""

import os
import tempfile

import pytest

# The compiled CPU op starts its outputs as NaN (read once, when the op first allocates), so a
# kernel that skips writing an element fails the comparisons instead of passing on zeroed pages.
os.environ["SPNAS_POISON_OUTPUTS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def contained_temp(tmp_path_factory):
    root = tmp_path_factory.mktemp("system-temp")
    names = ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR")
    saved = {name: os.environ.get(name) for name in names}
    saved_tempdir = tempfile.tempdir
    os.environ["TMPDIR"] = str(root)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    tempfile.tempdir = str(root)
    yield root
    tempfile.tempdir = saved_tempdir
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
