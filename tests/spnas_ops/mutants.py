"""Proof that the op tests bite: each mutant breaks the compiled CPU op in one small way, is
built, and must fail the op test matrix; the sources are restored afterwards, mutant or not.

    python tests/spnas_ops/mutants.py            # every mutant (one rebuild each, minutes)
    python tests/spnas_ops/mutants.py sign       # the ones whose name contains "sign"

Ends by rebuilding the unmodified sources. Exit status 1 if some mutant survived.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# name -> (file, text to replace, replacement): each a bug a kernel could plausibly have.
MUTANTS = {
    "skipped layer not zeroed": (
        "csrc/cpu/microkernels.h",
        "  else\n    zero_pixels(out, Wo, out_ps);",
        "  else\n    (void)out_ps;"),
    "forward drops a tap": (
        "csrc/cpu/microkernels.h",
        "      const acc_t* xk = x + kw * kBlock;\n",
        "      if (kh == k0 && kw == k0) continue;\n      const acc_t* xk = x + kw * kBlock;\n"),
    "threshold gradient sign": (
        "csrc/superkernel.h",
        "store_t(1, -g_z_expand);",
        "store_t(1, g_z_expand);"),
    "weight gradient in one long chain": (
        "csrc/cpu/microkernels.h",
        "constexpr int64_t kChainPixels = 256;",
        "constexpr int64_t kChainPixels = int64_t(1) << 40;"),
    "stride-2 dx misses a parity": (
        "csrc/cpu/microkernels.h",
        "  for (int e = 0; e < 2; ++e) {",
        "  for (int e = 0; e < 1; ++e) {"),
}


def build() -> None:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
                    "-e", ".", "-q"], cwd=ROOT, env=env, check=True)


def tests_fail() -> bool:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-k", "cpu",
           "tests/spnas_ops/test_op.py"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode != 0


def main(selection: list[str]) -> int:
    survived = []
    for name, (path, old, new) in MUTANTS.items():
        if selection and not any(s in name for s in selection):
            continue
        file = ROOT / path
        source = file.read_text()
        if source.count(old) != 1:
            print(f"{name}: the text to mutate is not in {path} exactly once; update this script")
            return 2
        try:
            file.write_text(source.replace(old, new))
            build()
            caught = tests_fail()
        finally:
            file.write_text(source)
        print(f"{name}: {'caught' if caught else 'SURVIVED'}", flush=True)
        if not caught:
            survived.append(name)
    build()
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
