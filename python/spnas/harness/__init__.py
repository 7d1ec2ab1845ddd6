"""The latency harness: export networks and layers, time them on a device, build and validate
runtime models.

    from spnas.harness import export, make_benchmark, profile, validate

`export` (TFLite via litert-torch with NHWC input, ONNX, TorchScript; every file checked against
PyTorch), `make_benchmark("litert" | "adb", ...)` (one `Benchmark` interface), `profile` (every
(layer, op) of a space -> a RuntimeModel file) and `validate` (random whole networks, predicted
vs measured). Optional dependencies (litert-torch, ai-edge-litert, onnx, onnxruntime) are
imported only where used.
"""

from .benchmark import Benchmark, BenchmarkError, DeviceLostError, Measurement, make_benchmark
from .export import FORMATS, ExportError, ExportResult, export, load_weights
from .profile import profile
from .validate import accuracy_summary, validate

__all__ = [
    "Benchmark", "BenchmarkError", "DeviceLostError", "Measurement", "make_benchmark",
    "FORMATS", "ExportError", "ExportResult", "export", "load_weights",
    "profile", "validate", "accuracy_summary",
]
