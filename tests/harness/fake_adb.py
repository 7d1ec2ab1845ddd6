"""A stand-in for `adb` with one Pixel-like phone attached.

Installed by the tests as an executable named `adb`. It accepts only the exact commands the
harness should send, appends each argv to $FAKE_ADB_LOG (JSON lines), and answers as adb and the
official benchmark_model binary do. $FAKE_ADB_SCENARIO picks a behaviour:
  ok          every command succeeds
  flaky       the first benchmark_model run dies (a transient failure worth a retry)
  gone        the device disappears right after the first push
  old_format  benchmark_model of an older release (no percentiles, no "INFO:" prefix)
  no_binary   benchmark_model is not on the phone
Unknown commands exit 99 so a test sees them.
"""

import json
import os
import sys

SERIAL = "HT7A1B234567"
BENCHMARK = "/data/local/tmp/benchmark_model"
REMOTE_DIR = "/data/local/tmp/spnas"
# Pixel 1: two 1.59 GHz cores and two 2.15 GHz cores.
MAX_FREQ = {0: 1593600, 1: 1593600, 2: 2150400, 3: 2150400}

REPORT_NEW = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [{runs}]
INFO: Min warmup runs: [{warmup}]
INFO: Num threads: [{threads}]
INFO: Graph: [{graph}]
INFO: #threads used for CPU inference: [{threads}]
INFO: Loaded model {graph}
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.0191
INFO: Initialized session in 3.118ms.
INFO: Running benchmark for at least {warmup} iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count={wcount} first=1874 curr=1402 min=1388 max=1874 avg=1451.3 std=61 p5=1390 median=1421 p95=1610

INFO: Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count={count} first=1409 curr=1398 min=1380 max=1702 avg=1417.62 std=38 p5=1384 median=1406 p95=1493

INFO: Inference timings in us: Init: 3118, First inference: 1874, Warmup (avg): 1451.3, Inference (avg): 1417.62
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.52 overall=3.1
"""

REPORT_OLD = """\
STARTING!
Min num runs: [{runs}]
Min warmup runs: [{warmup}]
Num threads: [{threads}]
Graph: [{graph}]
#threads used for CPU inference: [{threads}]
Loaded model {graph}
The input model file size (MB): 0.0191
Initialized session in 2.9ms.
Running benchmark for at least {warmup} iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count={wcount} first=81233 curr=79012 min=78870 max=81233 avg=79544.1 std=812

Running benchmark for at least {runs} iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count={count} first=79120 curr=78950 min=78412 max=80975 avg=79216.3 std=421

Inference timings in us: Init: 2900, First inference: 81233, Warmup (avg): 79544.1, Inference (avg): 79216.3
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Peak memory footprint (MB): init=2.1 overall=12.4
"""


def state_path():
    return os.environ["FAKE_ADB_LOG"] + ".state"


def load_state():
    try:
        with open(state_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"pushed": [], "benchmark_runs": 0, "gone": False}


def save_state(state):
    with open(state_path(), "w") as f:
        json.dump(state, f)


def fail(message, code=1):
    print(message)
    sys.exit(code)


def main(argv):
    with open(os.environ["FAKE_ADB_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    scenario = os.environ.get("FAKE_ADB_SCENARIO", "ok")
    state = load_state()
    if argv[:1] != ["-s"] or len(argv) < 3:
        fail(f"fake adb: expected -s SERIAL first, got {argv}", 99)
    if argv[1] != SERIAL or state["gone"]:
        fail(f"error: device '{argv[1]}' not found")
    command, args = argv[2], argv[3:]

    if command == "get-state" and not args:
        print("device")
        return
    if command == "push" and len(args) == 2:
        local, remote = args
        if not os.path.isfile(local) or not remote.startswith(REMOTE_DIR + "/"):
            fail(f"fake adb: bad push {args}", 99)
        state["pushed"].append(remote)
        if scenario == "gone":
            state["gone"] = True
        save_state(state)
        print(f"{local}: 1 file pushed, 0 skipped. 38.1 MB/s ({os.path.getsize(local)} bytes in 0.001s)")
        return
    if command != "shell":
        fail(f"fake adb: unexpected command {argv}", 99)

    if args == ["getprop", "ro.product.model"]:
        print("Pixel")
        return
    if args == ["cat", "/sys/devices/system/cpu/possible"]:
        print("0-3")
        return
    freq_paths = [f"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq" for c in MAX_FREQ]
    if args == ["cat", *freq_paths]:
        print("\n".join(str(MAX_FREQ[c]) for c in MAX_FREQ))
        return
    if args == ["mkdir", "-p", REMOTE_DIR]:
        return
    if args[:2] == ["rm", "-f"] and len(args) == 3 and args[2] in state["pushed"]:
        return
    if args[:1] == ["taskset"] and len(args) == 7:
        mask, binary, graph, threads, warmup, runs = args[1:]
        expected_mask = os.environ.get("FAKE_ADB_MASK", "8")
        if mask != expected_mask or not graph.startswith("--graph="):
            fail(f"fake adb: unexpected taskset/graph {args}", 99)
        if scenario == "no_binary" or binary != BENCHMARK:
            fail(f"/system/bin/sh: {binary}: inaccessible or not found", 127)
        graph = graph[len("--graph="):]
        if graph not in state["pushed"]:
            fail(f"fake adb: {graph} was never pushed", 99)
        values = {}
        for flag, name in ((threads, "num_threads"), (warmup, "warmup_runs"), (runs, "num_runs")):
            key, _, value = flag.partition("=")
            if key != f"--{name}" or not value.isdigit():
                fail(f"fake adb: unexpected flag {flag}", 99)
            values[name] = int(value)
        state["benchmark_runs"] += 1
        save_state(state)
        if scenario == "flaky" and state["benchmark_runs"] == 1:
            print("INFO: STARTING!\nINFO: Loaded model " + graph)
            fail("Aborted", 134)
        report = REPORT_OLD if scenario == "old_format" else REPORT_NEW
        print(report.format(
            runs=values["num_runs"], warmup=values["warmup_runs"], threads=values["num_threads"],
            graph=graph, wcount=max(values["warmup_runs"], 1), count=values["num_runs"],
        ))
        return
    fail(f"fake adb: unexpected shell command {args}", 99)


if __name__ == "__main__":
    main(sys.argv[1:])
