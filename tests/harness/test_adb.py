"""The adb backend against a stand-in `adb` that checks every command and replays real reports."""

import json
import os
import stat
import sys

import pytest

from spnas.harness import adb as adb_module
from spnas.harness.adb import AdbBenchmark, parse_benchmark_output
from spnas.harness.backends import make_benchmark
from spnas.harness.benchmark import BenchmarkError, DeviceLostError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fake_adb  # noqa: E402


@pytest.fixture
def phone(tmp_path, monkeypatch):
    """(adb executable path, function returning the argv lists it received)."""
    executable = tmp_path / "adb"
    with open(os.path.join(HERE, "fake_adb.py")) as f:
        executable.write_text(f"#!{sys.executable}\n" + f.read())
    executable.chmod(executable.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "adb.log"
    monkeypatch.setenv("FAKE_ADB_LOG", str(log))
    monkeypatch.setattr(adb_module, "_RETRY_DELAY_S", 0.0)

    def calls():
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    return str(executable), calls


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "layer_3_k5_e6.tflite"
    path.write_bytes(b"TFL3" + b"\0" * 64)
    return str(path)


def make(adb_path, **kw):
    options = dict(serial=fake_adb.SERIAL, adb=adb_path, warmup_runs=5, runs=50)
    options.update(kw)
    return AdbBenchmark(**options)


def test_exact_commands_and_report(phone, model_file):
    adb_path, calls = phone
    bench = make(adb_path)
    m = bench.measure(model_file)
    assert m.median_ms == pytest.approx(1.406)
    assert m.mean_ms == pytest.approx(1.41762)
    assert (m.min_ms, m.max_ms, m.std_ms) == pytest.approx((1.380, 1.702, 0.038))
    assert m.runs == 50 and m.statistic == "median"

    remote = "/data/local/tmp/spnas/layer_3_k5_e6.tflite"
    s = ["-s", fake_adb.SERIAL]
    freq = [f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq" for c in range(4)]
    assert calls() == [
        s + ["get-state"],
        s + ["shell", "getprop", "ro.product.model"],
        s + ["shell", "cat", "/sys/devices/system/cpu/possible"],
        s + ["shell", "cat", *freq],
        s + ["shell", "mkdir", "-p", "/data/local/tmp/spnas"],
        s + ["push", model_file, remote],
        # one thread -> the highest-numbered of the fastest cores (cpu3 -> mask 8)
        s + ["shell", "taskset", "8", fake_adb.BENCHMARK, f"--graph={remote}", "--num_threads=1",
             "--warmup_runs=5", "--num_runs=50"],
        s + ["shell", "rm", "-f", remote],
    ]


def test_protocol_names_device_and_mask(phone):
    adb_path, _ = phone
    proto = make(adb_path, threads=2).protocol()
    assert proto["backend"] == "adb" and proto["threads"] == 2
    assert proto["cpu_mask"] == "c"  # cpu2 + cpu3, the two 2.15 GHz cores
    assert "Pixel" in proto["device"] and fake_adb.SERIAL in proto["device"]


def test_explicit_mask_skips_probe(phone, model_file, monkeypatch):
    adb_path, calls = phone
    monkeypatch.setenv("FAKE_ADB_MASK", "f0")
    make(adb_path, cpu_mask="F0").measure(model_file)
    assert not any("cpuinfo_max_freq" in " ".join(c) for c in calls())


def test_transient_failure_is_retried(phone, model_file, monkeypatch):
    adb_path, calls = phone
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "flaky")
    m = make(adb_path).measure(model_file)
    assert m.median_ms == pytest.approx(1.406)
    assert sum(1 for c in calls() if "taskset" in c) == 2


def test_retries_run_out(phone, model_file, monkeypatch):
    adb_path, _ = phone
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "flaky")
    with pytest.raises(BenchmarkError, match="failed after 1 attempts"):
        make(adb_path, retries=0).measure(model_file)


def test_device_going_away_is_a_clear_error(phone, model_file, monkeypatch):
    adb_path, calls = phone
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "gone")
    with pytest.raises(DeviceLostError, match=f"device {fake_adb.SERIAL} is gone"):
        make(adb_path).measure(model_file)
    # no pointless retries once adb says the device is not there
    assert sum(1 for c in calls() if "taskset" in c) == 1


def test_wrong_serial(phone, model_file):
    adb_path, _ = phone
    with pytest.raises(DeviceLostError, match="not found"):
        make(adb_path, serial="nope").measure(model_file)


def test_missing_benchmark_binary(phone, model_file, monkeypatch):
    adb_path, _ = phone
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "no_binary")
    with pytest.raises(BenchmarkError, match="benchmark_model not found"):
        make(adb_path).measure(model_file)


def test_old_benchmark_model_reports_mean(phone, model_file, monkeypatch):
    adb_path, _ = phone
    monkeypatch.setenv("FAKE_ADB_SCENARIO", "old_format")
    m = make(adb_path).measure(model_file)
    assert m.statistic == "mean" and m.median_ms == pytest.approx(79.2163)


def test_missing_adb_executable(model_file, tmp_path):
    bench = make(str(tmp_path / "no-adb-here"))
    with pytest.raises(BenchmarkError, match="adb executable not found"):
        bench.measure(model_file)


def test_parse_scientific_notation_and_picks_timed_runs():
    text = (
        "INFO: count=1 curr=1357602 p5=1357602 median=1357602 p95=1357602\n\n"
        "INFO: count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 "
        "std=2565 p5=1238753 median=1239807 p95=1247415\n\n"
        "INFO: Inference timings in us: Init: 5579, First inference: 1357602, "
        "Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06\n"
    )
    m = parse_benchmark_output(text)
    assert m.runs == 50
    assert m.median_ms == pytest.approx(1239.807)
    assert m.mean_ms == pytest.approx(1240.27)


def test_parse_garbage_names_the_problem():
    with pytest.raises(BenchmarkError, match="no timing report"):
        parse_benchmark_output("Segmentation fault\n")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(serial=""), "serial"),
        (dict(cpu_mask="0x; reboot"), "cpu_mask"),
        (dict(threads=0), "threads"),
        (dict(runs=0), "runs"),
    ],
)
def test_bad_options(kw, message):
    options = dict(serial="x")
    options.update(kw)
    with pytest.raises(ValueError, match=message):
        make_benchmark("adb", **options)
