"""`spnas export ARCH.json`: the network to TFLite, ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import argparse
import os

from . import positive_int

# --out's extension -> format, when --format is not given.
_EXTENSIONS = {".tflite": "tflite", ".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript",
               ".ts": "torchscript"}


def _export_format(fmt: str | None, out: str) -> str:
    """--format, or the one --out's extension names; a conflict between them is an error."""
    from ..errors import SpnasError
    named = _EXTENSIONS.get(os.path.splitext(out)[1].lower())
    if fmt is None:
        if named is None:
            raise SpnasError(f"--out {out}: cannot tell the format from the extension; give "
                             f"--format (tflite, onnx or torchscript) or name the file "
                             f"{', '.join(f'*{e}' for e in _EXTENSIONS)}")
        return named
    if named is not None and named != fmt:
        raise SpnasError(f"--format {fmt} conflicts with --out {out}, whose extension means {named}")
    return fmt


def _export_input(args: argparse.Namespace) -> tuple[int, int, list[str]]:
    """(image size, classes, where each came from): the flags, else the run the files come from
    (config.json beside ARCH.json; the classifier's rows in --weights), else 224 px and 1000."""
    import json

    notes = []
    size, classes = args.image_size, args.num_classes
    if size is None:
        config = os.path.join(os.path.dirname(os.path.abspath(args.arch)), "config.json")
        try:
            with open(config) as f:
                size = int(json.load(f).get("image_size") or 0) or None
        except (OSError, ValueError, TypeError, AttributeError):
            size = None
        notes.append(f"{size} px from {config}" if size else "224 px (default)")
        size = size or 224
    if classes is None and args.weights:
        from ..harness.export import classifier_rows
        classes = classifier_rows(args.weights)
        if classes:
            notes.append(f"{classes} classes from {args.weights}")
    if classes is None:
        classes = 1000
        notes.append("1000 classes (default)")
    return size, classes, notes


def _export(args: argparse.Namespace) -> int:
    from ..layers import build_child
    from ..space import Architecture
    from ..harness.export import export, load_weights

    fmt = _export_format(args.format, args.out)
    arch = Architecture.load(args.arch)
    size, classes, notes = _export_input(args)
    if notes:
        print(f"input: {', '.join(notes)}")
    model = build_child(arch, num_classes=classes)
    if args.weights:
        load_weights(model, args.weights)
    result = export(model, (1, 3, size, size), args.out, fmt, rtol=args.rtol)
    print(result.summary())
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export an architecture to tflite, onnx or torchscript, checked against PyTorch",
        description="Build the network of ARCH.json and export it. The file is run back through "
                    "its runtime and compared with PyTorch's eval output (fp32 tolerance "
                    "--rtol, relative to the largest output). TFLite takes NHWC input.",
    )
    p.add_argument("arch", metavar="ARCH.json", help="architecture file (from `spnas search`/`derive`)")
    p.add_argument("--format", choices=("tflite", "onnx", "torchscript"),
                   help="default: from --out's extension (.tflite, .onnx, .pt/.pth/.ts)")
    p.add_argument("--weights", metavar="CKPT", help="checkpoint to load (weights only)")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the model")
    p.add_argument("--image-size", type=positive_int,
                   help="input size in px (default: the image_size in config.json beside "
                        "ARCH.json, as spnas search and train write it; else 224)")
    p.add_argument("--num-classes", type=positive_int,
                   help="classifier outputs (default: the classifier's rows in --weights; "
                        "else 1000)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="largest accepted error relative to the largest output (default: %(default)s)")
    p.set_defaults(func=_export)
