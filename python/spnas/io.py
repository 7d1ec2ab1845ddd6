"""JSON reads with a clear error, and atomic file writes: a crash or Ctrl-C leaves either the old
file or the new one, never half."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable


def read_json(path: str, what: str):
    """The JSON object in `path`; a SpnasError naming `what` and the file if it cannot be read
    ("cannot read <what> <path>: ...") or is not JSON ("<what> <path> is not valid JSON: ...")."""
    from .errors import SpnasError
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as err:
        raise SpnasError(f"cannot read {what} {path}: {err.strerror}") from None
    except ValueError as err:
        raise SpnasError(f"{what} {path} is not valid JSON: {err}") from None


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[object], None], binary: bool = False) -> None:
    """Write through `write(fileobj)` into a temp file beside `path`, fsync, then rename over it."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs private
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: str, obj) -> None:
    atomic_write(path, lambda f: (json.dump(obj, f, indent=2), f.write("\n")))


def atomic_torch_save(path: str, obj) -> None:
    import torch
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)
