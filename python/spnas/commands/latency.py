"""`spnas latency ARCH.json`: predicted latency of an architecture, per layer and in total."""

from __future__ import annotations

import json


def _run(args) -> int:
    from ..runtime import RuntimeModel  # torch: only when the command runs
    from ..space import Architecture

    arch = Architecture.load(args.arch)
    model = RuntimeModel.resolve(args.model)
    rows = model.breakdown(arch)
    total = model.predict(arch)
    if args.json:
        print(json.dumps({"arch": args.arch, "model": args.model, "total_ms": round(total, 4),
                          "constant_ms": model.constant_ms, "layers": rows,
                          "protocol": model.protocol}, indent=2))
        return 0
    print(f"{'layer':>5} {'stage':>5}  {'op':<6} {'ms':>8}")
    for r in rows:
        print(f"{r['index']:>5} {r['stage']:>5}  {r['op']:<6} {r['ms']:>8.3f}")
    print(f"{'fixed parts':<18} {model.constant_ms:>8.3f}")
    device = model.protocol.get("device") or "unknown device"
    print(f"{'total':<18} {total:>8.3f} ms  ({args.model}: {device})")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "latency", help="predict an architecture's latency from a runtime model",
        description="Sum the runtime model's per-layer figures for the ops of ARCH.json plus its "
                    "constant for the fixed parts.")
    p.add_argument("arch", metavar="ARCH.json", help="architecture file (spnas search/derive write one)")
    p.add_argument("--model", default="pixel1", help="preset name (pixel1) or runtime-model file "
                                                     "(default: pixel1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)
