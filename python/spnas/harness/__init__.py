"""The latency harness: export networks and layers, time them on a device, build and validate
runtime models.

    from spnas.harness import export, make_benchmark, profile, validate

`export` (TFLite via litert-torch with NHWC input, ONNX, TorchScript; every file checked against
PyTorch), `make_benchmark("litert" | "adb", ...)` (one `Benchmark` interface), `profile` (every
(layer, op) of a space -> a RuntimeModel file) and `validate` (random whole networks, predicted
vs measured). Optional dependencies (litert-torch, ai-edge-litert, onnx, onnxruntime) are
imported only where used.
"""

from importlib import import_module

# Loaded on first use: they import torch, and `spnas --help` registers the harness commands.
_LAZY = {**{name: "benchmark" for name in ("Benchmark", "BenchmarkError", "DeviceLostError",
                                           "Measurement", "make_benchmark")},
         **{name: "export" for name in ("FORMATS", "ExportError", "ExportResult", "export",
                                        "load_weights")},
         "profile": "profile", "validate": "validate", "accuracy_summary": "validate"}

__all__ = [
    "Benchmark", "BenchmarkError", "DeviceLostError", "Measurement", "make_benchmark",
    "FORMATS", "ExportError", "ExportResult", "export", "load_weights",
    "profile", "validate", "accuracy_summary",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spnas.harness' has no attribute {name!r}")
