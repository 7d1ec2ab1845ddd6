"""benchmarks/search_quality.py --scale quick: the whole comparison, small, and its resume."""

import base64
import importlib.util
import json
import math
import os

import numpy as np
import torch

from spnas import Architecture
from spnas import data as datamod
from spnas.layers import build_child

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "search_quality", os.path.join(ROOT, "benchmarks", "search_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_comparison_and_resume(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "quality"
    assert bench.main(["--scale", "quick", "--out", str(out)]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    roles = {r.get("role") for r in records if r["kind"] == "train"}
    assert {"found", "random", "all k3_e3", "all k5_e6", "authors' network"} <= roles
    # the random networks' predicted latency is within the tolerance of the found one's
    found = next(r for r in records if r["kind"] == "search")
    for r in records:
        if r.get("role") == "random":
            assert abs(r["predicted_ms"] - found["predicted_ms"]) <= 0.15 * found["predicted_ms"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budgets"]["60"]["percentile"] is not None
    assert (out / "quality.png").stat().st_size > 0
    assert "| 60 |" in capsys.readouterr().out
    # a second run finds every job done: nothing is trained again
    assert bench.main(["--scale", "quick", "--out", str(out)]) == 0
    assert (out / "results.jsonl").read_text().splitlines() == lines
    # --report only reads the results file
    capsys.readouterr()
    assert bench.main(["--scale", "quick", "--out", str(out), "--report"]) == 0
    assert "| 60 |" in capsys.readouterr().out
    assert (out / "results.jsonl").read_text().splitlines() == lines
    # trainings of an earlier search of the budget (the file kept them after the search record
    # was replaced) are not part of the comparison: their random networks were drawn for the
    # earlier found network's latency
    trained = next(r for r in records if r.get("role") == "random")
    stale = [{**trained, "role": role, "ops": ["skip"] + trained["ops"][1:], "test_top1": 0.01,
              "job": f"train {role} 60 stale seed 0"} for role in ("random", "found")]
    with open(out / "results.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in stale)
    assert bench.main(["--scale", "quick", "--out", str(out), "--report"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["budgets"] == summary["budgets"]


def test_parallel_workers_run_every_job_once(tmp_path, monkeypatch):
    # spawned workers import the benchmark by name (sys.path travels to them)
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    bench = importlib.import_module("search_quality")
    out = tmp_path / "quality"
    args = ["--scale", "quick", "--out", str(out), "--parallel", "2", "--threads", "1"]
    assert bench.main(args) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    jobs = [r["job"] for r in records]
    assert len(jobs) == len(set(jobs))  # no job recorded twice
    assert sum(r["kind"] == "search" for r in records) == 1
    roles = {r.get("role") for r in records if r["kind"] == "train"}
    assert {"found", "random", "all k3_e3", "all k5_e6", "authors' network"} <= roles
    assert all(0.0 <= r["test_top1"] <= 1.0 for r in records if r["kind"] == "train")
    before = (out / "results.jsonl").read_text()
    assert bench.main(args) == 0
    assert (out / "results.jsonl").read_text() == before


def test_report_of_a_folder_without_results_says_so(tmp_path, capsys):
    bench = load_benchmark()
    try:
        bench.main(["--scale", "quick", "--out", str(tmp_path / "none"), "--report"])
    except SystemExit as exit:
        assert exit.code == 2
    else:
        raise AssertionError("--report on an empty folder must fail")
    assert "no " + str(tmp_path / "none" / "results.jsonl") in capsys.readouterr().err


def test_search_seeds_each_compared_with_random_networks_of_their_own_latency(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "quality"
    assert bench.main(["--scale", "quick", "--out", str(out), "--search-seeds", "0,1"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    searches = {r["job"]: r for r in records if r["kind"] == "search"}
    assert set(searches) == {"search 60", "search 60 seed 1"}
    assert json.loads((out / "search-60-s1" / "config.json").read_text())["seed"] == 1
    for suffix, job in (("", "search 60"), (" s1", "search 60 seed 1")):
        found_ms = searches[job]["predicted_ms"]
        trains = [r for r in records if r.get("role") in ("found" + suffix, "random" + suffix)]
        assert {r["role"] for r in trains} == {"found" + suffix, "random" + suffix}
        assert all(abs(r["predicted_ms"] - found_ms) <= 0.15 * found_ms for r in trains)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["budgets"]) == {"60", "60 s1"}
    assert summary["budgets"]["60 s1"]["search_seed"] == 1
    assert "| 60 s1 |" in capsys.readouterr().out


def test_choice_effects_recover_a_planted_effect(tmp_path):
    # accuracy = 80 + 3 x latency + 0.5 per 5x5 layer of the 14 px stage (+ a tie-breaking
    # wobble per seed that averages out): the fit gives 0.5 there and ~0 elsewhere
    import random as rnd
    from spnas import RuntimeModel
    from spnas.space import get_space, random_architecture
    bench = load_benchmark()
    space = get_space("mnasnet-small")
    model = RuntimeModel.resolve(bench.VM_MODEL)
    results = bench.Results(str(tmp_path / "results.jsonl"))
    stage_of = [layer["stage"] for layer in space.layers()]
    first = min(stage_of)
    g = rnd.Random(0)
    for n in range(30):
        arch = random_architecture(space, g)
        k5 = sum(o.startswith("k5") for o, s in zip(arch.ops, stage_of) if s == first)
        acc = 80 + 3 * model.predict(arch) + 0.5 * k5
        for seed, wobble in ((0, -0.1), (1, 0.1)):
            results.add({"kind": "train", "job": f"train random 0.3 {n} seed {seed}", "role": "random",
                         "budget": 0.3, "ops": arch.ops, "seed": seed, "val_top1": (acc + wobble) / 100})
    effects = bench.choice_effects(results, space, model, 28)["effects"]
    planted = next(v for k, v in effects.items() if k.startswith(f"stage {first} ") and k.endswith("5x5"))
    assert abs(planted["points_per_layer"] - 0.5) < 1e-6
    others = [v["points_per_layer"] for k, v in effects.items() if not k.endswith("5x5")
              or not k.startswith(f"stage {first} ")]
    assert len(others) == 8 and max(abs(v) for v in others) < 0.5
    assert not bench.choice_effects(bench.Results(str(tmp_path / "none.jsonl")), space, model, 28)


def test_overall_averages_found_minus_random_median_over_the_rows():
    bench = load_benchmark()
    # (label, found mean, per seed, random means, percentile, q75, random sd, seed sd)
    rows = [("a", 0.86, [], [0.84, 0.85, 0.86], None, 0.855, None, None),   # +1 point, above q75
            ("b", 0.84, [], [0.84, 0.85, 0.87], None, 0.86, None, None),    # -1 point
            ("c", 0.87, [], [0.85, 0.86, 0.87], None, 0.865, None, None),   # +1 point, above q75
            ("d", 0.90, [], [0.85], None, None, None, None),                 # one random: left out
            ("c s1", 0.87, [], [0.85, 0.86, 0.87], None, 0.865, None, None)]  # c's network again
    o = bench.overall(rows)
    assert o["comparisons"] == 3
    assert abs(o["mean_points"] - 1 / 3) < 1e-9
    assert abs(o["se"] - (4 / 3) ** 0.5 / 3 ** 0.5) < 1e-9
    assert (o["above_median"], o["at_q75"]) == (2, 2)
    assert "architecture_sd_points" not in o  # no seed spread given
    # random means spread 0.5 (sd) with seed sd 0.6 over 2 seeds: 0.25 - 0.18 = 0.07 of it is
    # the architectures'
    noisy = [(label, m, [m, m], r, None, q, 0.005, 0.006) for label, m, _, r, _, q, _, _ in rows]
    o = bench.overall(noisy)
    assert abs(o["architecture_sd_points"] - 0.07 ** 0.5) < 1e-9
    assert abs(o["seed_sd_points"] - 0.6) < 1e-9
    assert bench.overall(rows[:1]) == {}


def test_regime_trains_random_networks_of_one_latency_and_no_search(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "regime"
    args = ["--scale", "quick", "--out", str(out), "--regime", "60", "--random", "3", "--seeds", "0,1"]
    assert bench.main(args) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and all(r["kind"] == "train" and r["role"] == "regime" for r in records)
    assert len({tuple(r["ops"]) for r in records}) == 3 and {r["seed"] for r in records} == {0, 1}
    assert all(abs(r["predicted_ms"] - 60) <= 0.15 * 60 for r in records)
    assert json.loads((out / "regime.json").read_text())["networks"] == 3
    assert "Does architecture matter at 60 ms?" in capsys.readouterr().out
    assert bench.main(args) == 0  # resumed: nothing trained again
    assert len((out / "results.jsonl").read_text().splitlines()) == len(records)


def test_regime_report_takes_the_seed_noise_out_of_the_spread(tmp_path, capsys):
    # three networks, two seeds each: 80/82, 84/84, 86/88 %. Means 81, 84, 87: variance 9; seed
    # variance pooled (2 + 0 + 2) / 3 = 4/3, of which a two-seed mean holds half: 9 - 2/3
    # Which of 8 test images each training gets right: the two seeds differ on 2, 0 and 4 of
    # them, so one training's test-set variance is (2 + 0 + 4) / (2 * 8^2) / 3 = 1/64: sd 12.5 points
    bench = load_benchmark()
    masks = (((1, 1, 1, 1, 0, 0, 0, 0), (1, 1, 0, 0, 0, 0, 0, 0)),
             ((1, 0, 1, 0, 1, 0, 1, 0), (1, 0, 1, 0, 1, 0, 1, 0)),
             ((1, 1, 1, 1, 1, 1, 1, 1), (1, 1, 1, 1, 0, 0, 0, 0)))
    with open(tmp_path / "results.jsonl", "w") as f:
        for n, accs in enumerate(((80, 82), (84, 84), (86, 88))):
            for seed, acc in enumerate(accs):
                right = base64.b64encode(np.packbits(np.array(masks[n][seed], dtype=bool)).tobytes())
                f.write(json.dumps({"kind": "train", "job": f"train regime 60 net{n} seed {seed}",
                                    "role": "regime", "budget": 60.0, "ops": [f"net{n}"],
                                    "seed": seed, "test_top1": acc / 100,
                                    "test_right": right.decode(), "test_images": 8}) + "\n")
    assert bench.main(["--scale", "quick", "--out", str(tmp_path), "--regime", "60", "--seeds", "0,1",
                       "--report"]) == 0
    regime = json.loads((tmp_path / "regime.json").read_text())
    assert regime["networks"] == 3
    assert abs(regime["seed_sd"] - (4 / 3) ** 0.5) < 1e-9
    assert abs(regime["architecture_sd"] - (9 - 2 / 3) ** 0.5) < 1e-9
    assert abs(regime["ratio"] - (9 - 2 / 3) ** 0.5 / (4 / 3) ** 0.5) < 1e-9
    # the range of the means (87 - 81) beside what seed noise alone would make among 3 networks:
    # E[range of 3 standard normals] = 3 / sqrt(pi), times the sd of a two-seed mean
    assert abs(regime["range_points"] - 6) < 1e-9
    assert abs(regime["noise_range_points"] - 3 / math.pi ** 0.5 * (2 / 3) ** 0.5) < 1e-6
    assert abs(regime["test_set_sd_points"] - 12.5) < 1e-9
    assert abs(regime["disagreement"] - 0.25) < 1e-12 and regime["pairs"] == 3
    printed = capsys.readouterr().out
    assert "ratio 2.50" in printed and "the test set alone makes 12.50 points" in printed
    # a third seed in the file is not one of --seeds 0,1: the same answer
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "job": "train regime 60 net0 seed 2", "role": "regime",
                            "budget": 60.0, "ops": ["net0"], "seed": 2, "test_top1": 0.5}) + "\n")
    assert bench.main(["--scale", "quick", "--out", str(tmp_path), "--regime", "60", "--seeds", "0,1",
                       "--report"]) == 0
    assert json.loads((tmp_path / "regime.json").read_text()) == regime


def test_regime_records_which_test_images_each_training_gets_right(tmp_path):
    from test_arrays import idx_folder  # an MNIST-style folder: a data set with a test split
    bench = load_benchmark()
    data = idx_folder(tmp_path / "mnist", n_train=64, n_test=16)
    out = tmp_path / "regime"
    assert bench.main(["--scale", "quick", "--out", str(out), "--data", str(data), "--regime", "60",
                       "--random", "2", "--seeds", "0,1"]) == 0
    split = datamod.load(str(data), 16)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 4
    for r in records:
        mask = bench.right_mask(r)
        assert r["scored_on"] == "test" and r["test_images"] == 16 and mask.shape == (16,)
        assert mask.mean() == r["test_top1"]  # the very weights and images the test top-1 scored
        # and image by image, against best.pt rerun on the test split in its order
        arch = Architecture(r["ops"], "mnasnet")
        net = build_child(arch, num_classes=len(split.classes))
        net.load_state_dict(torch.load(out / f"train-{bench.arch_id(arch)}-s{r['seed']}" / "best.pt",
                                       weights_only=True))
        with torch.no_grad():
            logits = net.eval()(torch.stack([split.test[i][0] for i in range(16)]))
        labels = torch.tensor([int(split.test[i][1]) for i in range(16)])
        assert (mask == (logits.argmax(1) == labels).numpy()).all()
    regime = json.loads((out / "regime.json").read_text())
    pairs = {}
    for r in records:
        pairs.setdefault(tuple(r["ops"]), []).append(bench.right_mask(r))
    disagree = [int((a != b).sum()) for a, b in pairs.values()]
    assert regime["pairs"] == 2
    assert abs(regime["test_set_sd_points"] - 100 * (sum(disagree) / 2 / (2 * 16 ** 2)) ** 0.5) < 1e-9


def test_expected_range_of_normals_matches_known_values():
    bench = load_benchmark()
    # exact for 2 and 3 values (2 and 3 over sqrt(pi)); tabulated (d2 of control charts) for 12
    assert abs(bench.expected_range(2) - 2 / math.pi ** 0.5) < 1e-6
    assert abs(bench.expected_range(3) - 3 / math.pi ** 0.5) < 1e-6
    assert abs(bench.expected_range(12) - 3.258) < 1e-3


def test_regime_must_be_a_positive_latency(tmp_path, capsys):
    bench = load_benchmark()
    try:
        bench.main(["--scale", "quick", "--out", str(tmp_path), "--regime", "0"])
    except SystemExit as exit:
        assert exit.code == 2
    else:
        raise AssertionError("--regime 0 must fail")
    assert "--regime must be a latency in ms > 0" in capsys.readouterr().err
