"""`spnas derive RUN_DIR`: the architecture a search's thresholds select, as arch.json."""

from __future__ import annotations

import os

from ..errors import SpnasError


def derive_run(run_dir: str):
    """(Architecture, config) from RUN_DIR/checkpoint.pt: the hard decisions of its thresholds."""
    from ..search import CHECKPOINT, SearchConfig, build_supernet, load_checkpoint  # torch

    if not os.path.isdir(run_dir):
        raise SpnasError(f"RUN_DIR {run_dir}: no such directory")
    ckpt = load_checkpoint(os.path.join(run_dir, CHECKPOINT))
    try:
        cfg = SearchConfig(**ckpt["config"])
        num_classes = ckpt["model"]["head.classifier.bias"].shape[0]
        net = build_supernet(cfg, num_classes)
        net.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise SpnasError(f"{run_dir}/{CHECKPOINT} is not a spnas search checkpoint "
                         f"({str(err).splitlines()[0]})") from None
    return net.derive(), cfg, int(ckpt["step"])


def _run(args) -> int:
    from ..runtime import RuntimeModel
    from ..search import ARCH, format_result

    arch, cfg, step = derive_run(args.run_dir)
    model_name = args.model or cfg.runtime_model
    predicted = RuntimeModel.resolve(model_name).predict(arch)
    out = args.out or os.path.join(args.run_dir, ARCH)
    arch.save(out, runtime_model=model_name, predicted_ms=round(predicted, 4), step=step)
    print(format_result(arch, model_name, predicted, out))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "derive", help="derive the architecture of a search run (also mid-run)",
        description="Read RUN_DIR/checkpoint.pt, take the hard decisions of its thresholds, print the "
                    "architecture (timm block strings) and its predicted latency, and write it as JSON.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by spnas search")
    p.add_argument("--model", help="runtime model for the prediction: preset name or file "
                                   "(default: the one the search used)")
    p.add_argument("--out", help="where to write the architecture JSON (default: RUN_DIR/arch.json)")
    p.set_defaults(func=_run)
