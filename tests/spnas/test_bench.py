"""`spnas bench`: the ratio table runs end to end on a tiny case and says how it was measured."""

import json
import os
import platform
import re
import subprocess
import sys

import pytest

from spnas import bench
from spnas.cli import main


def test_table_of_a_tiny_case(capsys, tmp_path):
    out = tmp_path / "rows.json"
    code = main(["bench", "--batch", "1", "--shapes", "4", "--layout", "channels_last",
                 "--repeats", "1", "--trim-heap", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    rows = json.loads(out.read_text())
    assert [r["shape"] for r in rows] == [[1, 1152, 7, 1]] and rows[0]["channels_last"]
    assert set(rows[0]["seconds"]) == {f"{c}/{p}" for c in bench.CONTENDERS
                                       for p in ("fwd", "fwd+bwd")}
    assert all(v > 0 for v in rows[0]["seconds"].values())
    assert "| (1, 1152, 7, 1) | channels_last |" in text


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_heap_kept_mapped_on_glibc():
    # In a child process: mallopt changes the allocator of the whole process.
    code = ("from spnas import bench; import sys; "
            "sys.exit(0 if bench.keep_heap_mapped() else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

    def table(*extra):
        done = subprocess.run([sys.executable, "-m", "spnas.cli", "bench", "--batch", "1",
                               "--shapes", "4", "--layout", "nchw", "--repeats", "1", *extra],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "heap kept mapped" in table()
    trimmed = table("--trim-heap")
    assert "heap kept mapped" not in trimmed and "medians of interleaved" in trimmed


def test_the_command_knows_the_number_of_stage_shapes():
    from spnas.commands import bench as command
    assert command.STAGES == len(bench.STAGE_SHAPES)


def test_help_imports_no_torch():
    # `spnas --help` and a command's --help stay fast: neither torch nor the compiled op loads.
    code = ("import sys, spnas.cli; "
            "[spnas.cli.main([c, '--help']) for c in ('search', 'train', 'bench', 'export')]; "
            "sys.exit(1 if {'torch', 'spnas_ops'} & set(sys.modules) else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, "torch or spnas_ops imported by --help"


def run_benchmark(script: str, *args: str, timeout: int = 120) -> str:
    """stdout of benchmarks/SCRIPT run with ARGS, which must succeed."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, os.path.join(root, "benchmarks", script), *args],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def table_rows(stdout: str) -> list[str]:
    """The markdown table's lines, header first, without the separator."""
    return [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]


def test_bench_data_prints_its_table():
    out = run_benchmark("bench_data.py", "--images", "300", "--batch", "16", "--batches", "3",
                        "--steps", "1", "--rounds", "2", "--threads", "1")
    rows = table_rows(out)
    assert len(rows) == 6  # header, DataLoader, whole batches, augment, two training steps
    assert rows[1].endswith("| 1.0x |") and "spnas.data.loader" in rows[2]
    assert "all k5_e6" in rows[4] and "all k3_e3" in rows[5]
    # the last line's shares are the table's medians divided out
    ms = {row.split(" | ")[0][2:]: float(row.split(" | ")[1]) for row in rows[1:]}
    feed = ms["spnas.data.loader, whole batches"] + ms["augment flip-crop (channels_last batch)"]
    last = out.strip().splitlines()[-1]
    share = float(re.search(r"is ([0-9.]+)% of the all-k3_e3 step", last).group(1))
    assert abs(share - 100 * feed / ms["training step, mnasnet-small all k3_e3"]) < 0.1, last


def test_bench_superkernel_part_prints_its_table():
    rows = table_rows(run_benchmark("bench_superkernel_part.py", "--rounds", "2", "--calls", "2",
                                    "--threads", "1"))
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| 96", "| 144", "| 240", "| 480", "| 1152"]
    for row in rows[1:]:  # the ratio is the two medians divided
        compiled, oracle, ratio = (float(re.match(r"[0-9.]+", cell.strip()).group())
                                   for cell in row.split(" | ")[1:4])
        assert abs(oracle / compiled - ratio) <= 0.05 * ratio + 0.1, row


def test_bench_search_step_times_the_real_loop():
    out = run_benchmark("bench_search_step.py", "--epochs", "2", "--dropout-epochs", "1",
                        "--threads", "1", timeout=300)
    line = out.strip().splitlines()[-1]
    m = re.match(r"search iteration: median ([0-9.]+) ms \(p10-p90 ([0-9.]+)-([0-9.]+)\) over (\d+) of (\d+) steps", line)
    assert m, line
    median, p10, p90, timed, steps = (float(v) for v in m.groups())
    assert 0 < p10 <= median <= p90 and 0 < timed < steps  # the first steps and epoch ends left out
