"""Export a network (or a single layer) to TFLite, ONNX or TorchScript, and prove the file is right.

Every export is run back through its own runtime (LiteRT interpreter, onnxruntime, torch.jit)
on a random input and compared with PyTorch's eval-mode output; the result carries the error.

TFLite files take NHWC input (and give NHWC output for 4-D outputs): phones feed images as
NHWC, and an NCHW graph would make the timed model start with a transpose that no deployed
network has. litert-torch's channel-last wrapper permutes inside the PyTorch graph and its layout
passes then cancel the permutes against the convolutions, which `export_tflite` verifies.
ONNX and TorchScript keep PyTorch's NCHW, which is what their users expect.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import SpnasError, ToolError
from ..io import atomic_write

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "export",
    "export_tflite",
    "export_onnx",
    "export_torchscript",
    "load_weights",
    "tflite_op_names",
]

FORMATS = ("tflite", "onnx", "torchscript")

# fp32 agreement required between PyTorch and the exported file: max |diff| / max |reference|.
DEFAULT_RTOL = 1e-4


class ExportError(ToolError):
    """Conversion failed, or the exported file does not reproduce the PyTorch output."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: str
    format: str
    input_shape: tuple[int, ...]  # as the exported file takes it (NHWC for tflite)
    max_abs_error: float | None  # None when no runtime for the format is installed
    max_rel_error: float | None
    checked_with: str

    def summary(self) -> str:
        if self.max_abs_error is None:
            return f"{self.path}: {self.format}, not run ({self.checked_with})"
        return (
            f"{self.path}: {self.format}, input {list(self.input_shape)}, checked with "
            f"{self.checked_with}: max abs error {self.max_abs_error:.3g}, "
            f"relative {self.max_rel_error:.3g}"
        )


def export(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str,
    format: str = "tflite",
    *,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ExportResult:
    """Export `model` (taking NCHW `input_shape`) to `path` in `format`, then check it.

    Raises ExportError if the file's output differs from PyTorch's by more than `rtol`
    (relative to the largest reference output), and ValueError for a bad format or shape.
    """
    exporters = {"tflite": export_tflite, "onnx": export_onnx, "torchscript": export_torchscript}
    if format not in exporters:
        raise SpnasError(f"format must be one of {list(FORMATS)}, got {format!r}")
    return exporters[format](model, input_shape, path, rtol=rtol, seed=seed)


def _probe(model: nn.Module, input_shape: Sequence[int], seed: int):
    """(model in eval mode, a random input of `input_shape` drawn from `seed`, the model's
    output on it): what every exporter checks its file against."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise SpnasError(f"input_shape must be (N, C, H, W) with positive sizes, got {list(input_shape)}")
    model = model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x)
    if not isinstance(y, torch.Tensor):
        raise ExportError("the model must return a single tensor")
    return model, x, y


def _compare(got: np.ndarray, want: torch.Tensor, rtol: float, what: str) -> tuple[float, float]:
    want_np = want.detach().cpu().numpy()
    if tuple(got.shape) != tuple(want_np.shape):
        raise ExportError(f"{what}: output shape {list(got.shape)} != PyTorch {list(want_np.shape)}")
    abs_err = float(np.max(np.abs(got.astype(np.float64) - want_np))) if got.size else 0.0
    scale = float(np.max(np.abs(want_np))) if want_np.size else 0.0
    rel_err = abs_err / max(scale, 1e-12)
    if not np.isfinite(abs_err) or rel_err > rtol:
        raise ExportError(
            f"{what}: output differs from PyTorch (max abs error {abs_err:.3g}, relative "
            f"{rel_err:.3g} > tolerance {rtol:g})"
        )
    return abs_err, rel_err


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Hide what converters print (progress, absl logs from C++) unless the block fails.

    Redirects the process-level stdout/stderr file descriptors, since much of the noise comes
    from native code that Python's sys.stdout redirection never sees.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                sink.seek(0)
                tail = sink.read()[-4000:].decode(errors="replace")
                if tail.strip():
                    sys.stderr.write(tail)


def _litert_torch():
    try:
        with quiet_native_output():
            import litert_torch
    except ImportError:
        raise ExportError("TFLite export needs litert-torch (pip install litert-torch)") from None
    litert_torch.config.show_progress = False
    return litert_torch


def tflite_op_names(path: str) -> list[str]:
    """Builtin op names of a .tflite graph, in execution order (delegate nodes excluded)."""
    from .litert import make_interpreter

    interpreter = make_interpreter(path)
    details = interpreter._get_ops_details()  # the interpreter's only op listing
    return [d["op_name"] for d in details if d["op_name"] != "DELEGATE"]


def export_tflite(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str,
    *,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ExportResult:
    """float32 .tflite with NHWC input; fails if the graph times a TRANSPOSE or is wrong."""
    from .litert import run_tflite

    model, x, reference = _probe(model, input_shape, seed)
    litert_torch = _litert_torch()
    channel_last_outputs = [0] if reference.dim() == 4 else None
    wrapped = litert_torch.to_channel_last_io(model, args=[0], outputs=channel_last_outputs).eval()
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    try:
        with quiet_native_output():
            content = litert_torch.convert(wrapped, (x_nhwc,)).model_content()
        atomic_write(path, lambda f: f.write(content), binary=True)
    except Exception as e:  # converter errors come in many types; name the file and keep the cause
        raise ExportError(f"TFLite conversion to {path} failed: {type(e).__name__}: {e}") from e

    transposes = [op for op in tflite_op_names(path) if op == "TRANSPOSE"]
    if transposes:
        raise ExportError(
            f"{path}: the converted graph has {len(transposes)} TRANSPOSE op(s); "
            "latency would include layout changes no deployed network has"
        )
    (got,) = run_tflite(path, [x_nhwc.numpy()])
    want = reference.permute(0, 2, 3, 1) if reference.dim() == 4 else reference
    abs_err, rel_err = _compare(got, want, rtol, path)
    return ExportResult(path, "tflite", tuple(x_nhwc.shape), abs_err, rel_err, _interpreter_name())


def _interpreter_name() -> str:
    from .litert import load_interpreter_class, runtime_version

    _, runtime = load_interpreter_class()
    return f"{runtime} {runtime_version(runtime)}"


def export_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str,
    *,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ExportResult:
    """.onnx with NCHW input named "input"; checked with onnx.checker and onnxruntime if present."""
    model, x, reference = _probe(model, input_shape, seed)
    shape = tuple(x.shape)
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's backend)

        dynamo = True
    except ImportError:
        dynamo = False
    try:
        buffer = io.BytesIO()
        with quiet_native_output():
            torch.onnx.export(
                model, (x,), buffer, input_names=["input"], output_names=["output"], dynamo=dynamo
            )
        atomic_write(path, lambda f: f.write(buffer.getvalue()), binary=True)
    except Exception as e:
        raise ExportError(f"ONNX export to {path} failed: {type(e).__name__}: {e}") from e

    checked = []
    try:
        import onnx

        onnx.checker.check_model(path, full_check=True)
        checked.append(f"onnx.checker {onnx.__version__}")
    except ImportError:
        pass
    except Exception as e:
        raise ExportError(f"{path}: onnx.checker rejected the model: {e}") from e
    try:
        import onnxruntime
    except ImportError:
        return ExportResult(path, "onnx", shape, None, None, ", ".join(checked) or "no onnxruntime installed")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    abs_err, rel_err = _compare(got, reference, rtol, path)
    checked.append(f"onnxruntime {onnxruntime.__version__}")
    return ExportResult(path, "onnx", shape, abs_err, rel_err, ", ".join(checked))


def export_torchscript(
    model: nn.Module,
    input_shape: Sequence[int],
    path: str,
    *,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> ExportResult:
    """Traced TorchScript (.pt) with NCHW input, reloaded with torch.jit.load and compared."""
    model, x, reference = _probe(model, input_shape, seed)
    shape = tuple(x.shape)
    # TorchScript is deprecated upstream but still what many deployment stacks load; the
    # deprecation warnings would only repeat that on every export.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(model, (x,))
            atomic_write(path, lambda f: torch.jit.save(traced, f), binary=True)
        except Exception as e:
            raise ExportError(f"TorchScript export to {path} failed: {type(e).__name__}: {e}") from e
        loaded = torch.jit.load(path, map_location="cpu").eval()
    with torch.no_grad():
        got = loaded(x).numpy()
    abs_err, rel_err = _compare(got, reference, rtol, path)
    return ExportResult(path, "torchscript", shape, abs_err, rel_err, f"torch.jit {torch.__version__}")


def classifier_rows(checkpoint: str) -> int | None:
    """The number of classes a checkpoint's classifier has (rows of its last 2-D
    "classifier.weight"), or None when that cannot be read from it."""
    try:
        state = _state_dict(checkpoint)
    except SpnasError:
        return None
    rows = [v.shape[0] for k, v in state.items() if k.endswith("classifier.weight") and v.dim() == 2]
    return rows[-1] if rows else None


def _state_dict(checkpoint: str) -> dict:
    if not os.path.isfile(checkpoint):
        raise SpnasError(f"--weights: no such file {checkpoint}")
    try:
        data: Any = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpnasError(f"--weights: {checkpoint} is not a loadable weights-only checkpoint "
                         f"({reason})") from None
    if isinstance(data, dict):
        for key in ("ema", "model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise SpnasError(f"--weights: {checkpoint} holds no state dict of tensors")
    return data


def load_weights(model: nn.Module, checkpoint: str) -> nn.Module:
    """Load a checkpoint safely (weights_only) into `model`.

    Accepts a bare state dict or a dict holding one under "ema", "model" or "state_dict" (the EMA
    weights are the ones the paper evaluates and exports).
    """
    data = _state_dict(checkpoint)
    # DDP and torch.compile prefix parameter names; the exported network has neither.
    prefixes = ("module.", "_orig_mod.")
    cleaned = {}
    for name, value in data.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        cleaned[name] = value
    try:
        result = model.load_state_dict(cleaned, strict=False)
    except RuntimeError as e:  # shape mismatches; the first one names the tensor
        detail = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:1]
        raise SpnasError(
            f"--weights: {checkpoint} does not fit this architecture "
            f"({detail[0] if detail else str(e).splitlines()[0]})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        missing = result.missing_keys[:3]
        unexpected = result.unexpected_keys[:3]
        raise SpnasError(
            f"--weights: {checkpoint} does not fit this architecture "
            f"(missing {missing}{'...' if len(result.missing_keys) > 3 else ''}, "
            f"unexpected {unexpected}{'...' if len(result.unexpected_keys) > 3 else ''})"
        )
    return model
