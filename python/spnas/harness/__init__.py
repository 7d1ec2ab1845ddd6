"""The latency harness: export networks and layers, time them on a device, build and validate
runtime models.

    from spnas.harness import make_benchmark
    from spnas.harness.export import export
    from spnas.harness.profile import profile
    from spnas.harness.validate import validate

(the three functions share their modules' names, so they are imported from the modules).
`export` (TFLite via litert-torch with NHWC input, ONNX, TorchScript; every file checked against
PyTorch), `make_benchmark("litert" | "adb", ...)` (one `Benchmark` interface), `profile` (every
(layer, op) of a space -> a RuntimeModel file) and `validate` (random whole networks, predicted
vs measured). Optional dependencies (litert-torch, ai-edge-litert, onnx, onnxruntime) are
imported only where used.
"""

from ..lazy import lazy_names

# Loaded on first use: they import torch, and `spnas --help` registers the harness commands.
_LAZY = {**{name: "benchmark" for name in ("Benchmark", "BenchmarkError", "DeviceLostError",
                                           "Measurement")},
         "make_benchmark": "backends",
         **{name: "export" for name in ("FORMATS", "ExportError", "ExportResult", "load_weights")},
         "accuracy_summary": "validate"}

__all__ = [
    "Benchmark", "BenchmarkError", "DeviceLostError", "Measurement", "make_benchmark",
    "FORMATS", "ExportError", "ExportResult", "load_weights", "accuracy_summary",
]


__getattr__ = lazy_names(__name__, _LAZY, globals())
