"""The "adb" backend: the official TFLite `benchmark_model` binary on an Android phone.

Every external command is an argument list run without a host shell. `adb shell` itself joins
its arguments into one command line for the phone's shell, so each argument is quoted for that
shell as well. Transient failures (a busy device, a dropped USB packet) are retried; a device
that is gone fails at once with `DeviceLostError` naming the serial.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from typing import Any

from ..errors import SpnasError
from .benchmark import (
    BenchmarkError,
    DeviceLostError,
    Measurement,
    check_positive,
)

__all__ = ["AdbBenchmark", "parse_benchmark_output"]

# adb's own words when the device is not there (any adb since ~1.0.39).
_GONE = (
    "no devices/emulators found",
    "not found",
    "device offline",
    "device unauthorized",
    "device still authorizing",
    "closed",
    "no device",
)

_NUMBER = r"([0-9.]+(?:e[+-]?[0-9]+)?)"
# The statistics line benchmark_model prints for the warm-up and again for the timed runs, e.g.
# "count=50 first=20849 curr=20893 min=20530 max=21204 avg=20752.1 std=148 [p5=.. median=.. p95=..]"
# (all in microseconds; newer builds prefix "INFO: " and add percentiles).
_STATS = re.compile(r"count=(\d+)\s.*?\bavg=" + _NUMBER + r"\s+std=" + _NUMBER)
_FIELD = re.compile(r"\b(first|curr|min|max|avg|std|p5|median|p95)=" + _NUMBER)
_SUMMARY = re.compile(
    r"Inference timings in us: Init: " + _NUMBER + r", First inference: " + _NUMBER
    + r", Warmup \(avg\): " + _NUMBER + r", Inference \(avg\): " + _NUMBER
)


def parse_benchmark_output(text: str, warmup_runs: int = 0) -> Measurement:
    """Measurement of benchmark_model's report: the last statistics line (the timed runs)."""
    stats = [line for line in text.splitlines() if _STATS.search(line)]
    summary = _SUMMARY.search(text)
    if not stats or summary is None:
        tail = " | ".join(text.strip().splitlines()[-3:]) or "no output"
        raise BenchmarkError(f"benchmark_model printed no timing report (last lines: {tail})")
    line = stats[-1]
    count = int(_STATS.search(line).group(1))
    fields = {key: float(value) for key, value in _FIELD.findall(line)}
    mean_us = float(summary.group(4))
    median_us = fields.get("median")
    return Measurement(
        median_ms=(median_us if median_us is not None else mean_us) / 1e3,
        mean_ms=mean_us / 1e3,
        std_ms=fields.get("std", 0.0) / 1e3,
        min_ms=fields.get("min", mean_us) / 1e3,
        max_ms=fields.get("max", mean_us) / 1e3,
        runs=count,
        warmup_runs=warmup_runs,
        statistic="median" if median_us is not None else "mean",
    )


class AdbBenchmark:
    """Push a .tflite to the phone, run benchmark_model pinned with taskset, parse its report.

    serial: the phone (`adb devices`); benchmark_path: where the benchmark_model binary is on the
    phone; cpu_mask: hex taskset mask, or "auto" for the `threads` cores with the highest maximum
    frequency (the big cores, where a phone runs a foreground app's inference).
    """

    name = "adb"

    def __init__(
        self,
        serial: str,
        benchmark_path: str = "/data/local/tmp/benchmark_model",
        threads: int = 1,
        warmup_runs: int = 20,
        runs: int = 100,
        cpu_mask: str = "auto",
        remote_dir: str = "/data/local/tmp/spnas",
        adb: str = "adb",
        retries: int = 2,
        timeout_s: float = 600.0,
    ):
        if not serial:
            raise SpnasError("serial must name a device (see `adb devices`)")
        self.serial = serial
        self.benchmark_path = benchmark_path
        self.threads = check_positive("threads", threads)
        self.warmup_runs = check_positive("warmup_runs", warmup_runs, minimum=0)
        self.runs = check_positive("runs", runs)
        if cpu_mask != "auto" and not re.fullmatch(r"[0-9a-fA-F]+", cpu_mask or ""):
            raise SpnasError(f"cpu_mask must be a hex mask like 'f0' or 'auto', got {cpu_mask!r}")
        self._cpu_mask = None if cpu_mask == "auto" else cpu_mask.lower()
        self.remote_dir = remote_dir.rstrip("/")
        self.adb = adb
        self.retries = check_positive("retries", retries, minimum=0)
        self.timeout_s = timeout_s
        self._device: str | None = None

    # -- adb plumbing -------------------------------------------------------------------------

    def _adb(self, *args: str, timeout_s: float | None = None) -> str:
        """Run `adb -s SERIAL args...`; stdout+stderr on success, typed errors otherwise."""
        command = [self.adb, "-s", self.serial, *args]
        limit = timeout_s or self.timeout_s
        try:
            done = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=limit,
                check=False,
            )
        except FileNotFoundError:
            raise BenchmarkError(f"adb executable not found: {self.adb!r}") from None
        except subprocess.TimeoutExpired:
            raise BenchmarkError(f"adb {' '.join(args[:2])} timed out after {limit:.0f} s") from None
        output = done.stdout or ""
        if done.returncode != 0:
            last = output.strip().splitlines()[-1] if output.strip() else "no output"
            # adb's own complaints start with "error:" or "adb: error:"; the phone shell's
            # ("sh: /data/local/tmp/benchmark_model: not found") do not.
            adb_errors = [line.lower() for line in output.splitlines()
                          if line.lower().startswith(("error:", "adb: error:"))]
            if any(word in line for line in adb_errors for word in _GONE):
                raise DeviceLostError(
                    f"device {self.serial} is gone ({last}); reconnect it and rerun: "
                    "finished measurements are kept"
                )
            if self.benchmark_path in output and "not found" in output.lower():
                raise BenchmarkError(
                    f"benchmark_model not found on {self.serial} at {self.benchmark_path} "
                    "(push the official binary there or pass its path)"
                )
            raise _Transient(f"adb {' '.join(args[:2])} exited {done.returncode}: {output.strip()[-300:]}")
        return output

    def _shell(self, *args: str, timeout_s: float | None = None) -> str:
        return self._adb("shell", *(shlex.quote(a) for a in args), timeout_s=timeout_s)

    def _retrying(self, what: str, call):
        last = None
        for attempt in range(self.retries + 1):
            try:
                return call()
            except _Transient as e:
                last = e
                if attempt < self.retries:
                    time.sleep(min(2.0**attempt, 10.0) * _RETRY_DELAY_S)
        raise BenchmarkError(f"{what} failed after {self.retries + 1} attempts: {last}")

    def check_device(self) -> str:
        """The device's model name; DeviceLostError if it is not attached and authorized."""
        state = self._retrying("adb get-state", lambda: self._adb("get-state", timeout_s=30)).strip()
        if state.splitlines()[-1:] != ["device"]:
            raise DeviceLostError(f"device {self.serial} is not ready (state: {state or 'unknown'})")
        if self._device is None:
            model = self._retrying(
                "adb getprop", lambda: self._shell("getprop", "ro.product.model", timeout_s=30)
            ).strip()
            self._device = model or self.serial
        return self._device

    @property
    def cpu_mask(self) -> str:
        if self._cpu_mask is None:
            self._cpu_mask = self._fastest_cores_mask()
        return self._cpu_mask

    def _fastest_cores_mask(self) -> str:
        possible = self._retrying(
            "reading the cpu list",
            lambda: self._shell("cat", "/sys/devices/system/cpu/possible", timeout_s=30),
        ).strip()
        cpus = _parse_cpu_list(possible)
        paths = [f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq" for c in cpus]
        text = self._retrying(
            "reading cpu frequencies", lambda: self._shell("cat", *paths, timeout_s=30)
        )
        freqs = [int(v) for v in text.split() if v.isdigit()]
        if len(freqs) != len(cpus):
            raise BenchmarkError(
                f"could not read the max frequency of each cpu on {self.serial}; pass cpu_mask"
            )
        # Fastest first; among equals the highest-numbered core (the prime core on big.LITTLE).
        ranked = sorted(zip(freqs, cpus), reverse=True)[: self.threads]
        return format(sum(1 << c for _, c in ranked), "x")

    # -- Benchmark protocol ---------------------------------------------------------------------

    def protocol(self) -> dict[str, Any]:
        device = self.check_device()
        return {
            "backend": self.name,
            "runtime": "benchmark_model",
            "runtime_version": None,  # benchmark_model has no version flag; see benchmark_path
            "benchmark_path": self.benchmark_path,
            "threads": self.threads,
            "warmup_runs": self.warmup_runs,
            "runs": self.runs,
            "statistic": "median (mean where benchmark_model reports no median)",
            "cpu_mask": self.cpu_mask,
            "device": f"{device} (adb serial {self.serial})",
        }

    def measure(self, model_path: str) -> Measurement:
        if not os.path.isfile(model_path):
            raise BenchmarkError(f"model file not found: {model_path}")
        self.check_device()
        mask = self.cpu_mask
        remote = f"{self.remote_dir}/{os.path.basename(model_path)}"
        self._retrying("adb mkdir", lambda: self._shell("mkdir", "-p", self.remote_dir, timeout_s=60))
        self._retrying("adb push", lambda: self._adb("push", model_path, remote, timeout_s=300))
        command = [
            "taskset", mask, self.benchmark_path,
            f"--graph={remote}",
            f"--num_threads={self.threads}",
            f"--warmup_runs={self.warmup_runs}",
            f"--num_runs={self.runs}",
        ]

        def run_once() -> Measurement:
            output = self._shell(*command)
            try:
                return parse_benchmark_output(output, self.warmup_runs)
            except BenchmarkError as e:
                raise _Transient(str(e)) from None

        measurement = self._retrying(f"benchmark_model on {os.path.basename(model_path)}", run_once)
        self._retrying("adb rm", lambda: self._shell("rm", "-f", remote, timeout_s=60))
        return measurement


class _Transient(Exception):
    """A failure worth retrying (tool error, garbled output), not a missing device."""


# Seconds to wait before the first retry; tests set it to 0.
_RETRY_DELAY_S = 1.0


def _parse_cpu_list(text: str) -> list[int]:
    """'0-3,6' -> [0, 1, 2, 3, 6] (the kernel's cpu-list format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise BenchmarkError(f"unexpected cpu list from the device: {text!r}")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus
