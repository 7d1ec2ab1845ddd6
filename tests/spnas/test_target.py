"""`--target-ms`: the signed-lambda controller, the threshold reach clamp, and a short search
that has to land on its budget."""

import io
import json
import math

import pytest
import torch
from spnas import RuntimeModel
from spnas.cli import main
from spnas.search import (
    LambdaController,
    SearchConfig,
    build_supernet,
    clamp_thresholds,
    run_search,
    turn_off_closest,
)


def test_lambda_is_signed_by_the_budget():
    over = LambdaController(75.0, gain=0.03, rate=0.0003, lam_max=0.05)
    under = LambdaController(75.0, gain=0.03, rate=0.0003, lam_max=0.05)
    assert over.update(100.0) > 0
    # under budget lambda goes NEGATIVE, so the latency term pulls decisions back on (the old
    # multiplicative controller kept lambda >= 1e-6: nothing pulled latency back up)
    lam = under.update(50.0)
    assert lam < 0
    assert lam == pytest.approx(0.03 * math.log(50 / 75) + 0.0003 * math.log(50 / 75))
    # on target only the integral remains; far from it both parts saturate at lambda_max
    assert under.update(75.0) == pytest.approx(under.integral) and under.integral < 0
    for _ in range(2000):
        under.update(30.0)
    assert under.lam == -0.05 and under.integral == -0.05
    for _ in range(2000):
        over.update(131.0)
    assert over.lam == 0.05


def test_controller_state_round_trips():
    a = LambdaController(60.0, gain=0.03, rate=0.001, lam_max=0.05)
    for r in (131.0, 90.0, 40.0, 55.0):
        a.update(r)
    state = a.state_dict()
    assert set(state) == {"integral", "lam", "start_ms"}
    assert all(isinstance(v, float) for v in state.values())
    b = LambdaController(60.0, gain=0.03, rate=0.001, lam_max=0.05)
    b.load_state_dict(state)
    assert [a.update(r) for r in (70.0, 58.0, 61.0)] == [b.update(r) for r in (70.0, 58.0, 61.0)]


@pytest.mark.parametrize("target,sign", [(200.0, +1), (40.0, -1)])
def test_latency_gradient_on_thresholds_flips_sign_with_the_budget(target, sign):
    # every decision on (131 ms): under a 200 ms budget lambda < 0 and the latency term's
    # gradient on every threshold is >= 0 (gradient descent lowers t: decisions stay or come on);
    # over a 40 ms budget it is <= 0 (t rises: decisions go off)
    torch.manual_seed(0)
    net = build_supernet(SearchConfig(width_mult=0.25, op_backend="reference"), 10)
    net.place_thresholds(1.0)
    model = RuntimeModel.preset("pixel1")
    lam = LambdaController(target, gain=0.03, rate=0.0003, lam_max=0.05).update(
        model.predict(net.derive()))
    assert (lam > 0) == (sign < 0)
    net(torch.randn(2, 3, 16, 16))
    (lam * 1e3 * torch.log(net.runtime(model))).backward()
    grads = torch.stack([t.grad for t in net.thresholds()])
    assert (sign * grads >= 0).all() and (sign * grads > 0).sum() >= 20


def test_clamp_keeps_decisions_within_reach_and_changes_none():
    torch.manual_seed(0)
    net = build_supernet(SearchConfig(width_mult=0.25, op_backend="reference"), 10)
    net.place_thresholds(1.0)
    with torch.no_grad():
        for i, t in enumerate(net.thresholds()):
            t[i % 3] += 12.0 if i % 2 else 1.5  # decisions off, far or near
    before_t = torch.stack([t.detach().clone() for t in net.thresholds()])
    before_m, before_d = net.margins(), net.hard_decisions()
    assert before_m.min() < -8
    clamp_thresholds(net, 1.0)
    after_m = net.margins()
    assert torch.equal(net.hard_decisions(), before_d)
    assert after_m.min() >= -1.0 - 1e-4
    moved = torch.stack([t.detach() for t in net.thresholds()]) != before_t
    assert torch.equal(moved, before_m < -1.0)  # only the out-of-reach thresholds move


def test_turn_off_closest_drops_the_smallest_margins_until_within_budget():
    torch.manual_seed(0)
    net = build_supernet(SearchConfig(width_mult=0.25, op_backend="reference"), 10)
    model = RuntimeModel.preset("pixel1")
    n = len(net.searchable)
    m = torch.arange(1, 3 * n + 1, dtype=torch.float32).reshape(n, 3).flip(0) / 4  # all on
    net.set_margins(m)
    full = model.predict(net.derive())
    assert net.derive().ops == ["k5_e6"] * n
    order = sorted(((float(m[i, k]), i, k) for i in range(n) for k in range(3)
                    if k < 2 or net.searchable[i].superkernel.skippable))
    budget = full - 1e-6  # one decision that saves latency is enough
    turned = turn_off_closest(net, model.predict, budget)
    after = net.margins()
    assert model.predict(net.derive()) <= budget
    for j, (_, i, k) in enumerate(order):  # exactly the `turned` smallest margins went off
        assert (after[i, k] < 0) == (j < turned), (j, i, k)
    assert turned >= 1
    # a budget below every architecture: all that may go off goes off, and it stops
    turned = turn_off_closest(net, model.predict, 0.0)
    d = net.hard_decisions()
    skippable = torch.tensor([b.superkernel.skippable for b in net.searchable])
    assert torch.equal(d[:, 2].bool(), ~skippable) and not d[:, :2][skippable].any()


def test_short_search_lands_on_its_target(tmp_path):
    # 144 latency-phase steps of a half-width supernet on digits at 8 px (~30 s on one thread),
    # starting from the largest network (131.5 ms). The controller must bring the latency down
    # to the target and hold it there: over the second half of the phase the latency averages
    # within 10 % of the target, and the search ends within 15 % of it. The old multiplicative
    # controller (lambda *= exp(0.05 (R - T) / T), lambda >= 1e-6) ends this search at 30.6 ms.
    # This tiny, barely trained supernet chatters more around its target than the default
    # search on digits does (docs/search.md: within 1.3 %), hence the tolerances.
    target = 75.0
    run = tmp_path / "run"
    cfg = SearchConfig(run_dir=str(run), image_size=8, width_mult=0.5, batch_size=32, epochs=5,
                       dropout_epochs=0.5, steps_per_epoch=32, lr=0.004, log_every=1,
                       progress=False, target_ms=target)
    result = run_search(cfg)
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train" and r["epoch"] > 0.5]
    assert len(train) == 144
    late = [r["latency_ms"] for r in train[len(train) // 2:]]
    assert abs(sum(late) / len(late) - target) <= 0.10 * target, sum(late) / len(late)
    assert abs(result["predicted_ms"] - target) <= 0.15 * target, result["predicted_ms"]
    # under budget the latency term pushed back up: lambda went negative
    assert any(r["lambda"] < 0 for r in train)
    assert min(r["latency_ms"] for r in train[:-1]) < target  # it did undershoot and come back
    # so some step started within the budget, and the result meets it (the final decisions, or
    # the last ones within it if those exceed it), and the checkpoint derives the same result
    assert result["predicted_ms"] <= target
    assert main(["derive", str(run), "--out", str(tmp_path / "derived.json")]) == 0
    assert json.loads((tmp_path / "derived.json").read_text())["ops"] == result["arch"].ops


def test_target_ramps_geometrically_from_the_starting_latency():
    c = LambdaController(0.34, gain=0.03, rate=0.0003, lam_max=0.05, ramp_steps=100)
    assert c.update(0.56, step=0) == 0.0  # on the ramp's start: no error, no push
    assert c.start_ms == 0.56
    assert c.target(50) == pytest.approx(math.sqrt(0.56 * 0.34))
    assert c.target(100) == c.target(400) == 0.34
    # the error is taken against the ramped target, not the budget
    lam = c.update(0.56, step=50)
    assert lam == pytest.approx(c.integral + 0.03 * math.log(0.56 / math.sqrt(0.56 * 0.34)))
    assert lam < 0.03 * math.log(0.56 / 0.34)
    # the starting latency is part of the state: a resumed controller ramps the same way
    d = LambdaController(0.34, gain=0.03, rate=0.0003, lam_max=0.05, ramp_steps=100)
    d.load_state_dict(c.state_dict())
    assert [c.update(r, s) for r, s in ((0.5, 60), (0.45, 61))] == \
        [d.update(r, s) for r, s in ((0.5, 60), (0.45, 61))]
    # without a ramp the budget is the target from the first step
    assert LambdaController(0.34, 0.03, 0.0003, 0.05).update(0.56, 0) > 0


def test_integral_is_dropped_once_it_opposes_the_error():
    # one step above the target for a long time winds the integral up; the first step under it
    # must not keep pushing decisions off (the search landed 11-13% under its budget)
    c = LambdaController(0.34, gain=0.03, rate=0.0003, lam_max=0.05)
    for _ in range(50):
        c.update(0.368)
    assert c.integral == pytest.approx(50 * 0.0003 * math.log(0.368 / 0.34))
    e = math.log(0.323 / 0.34)
    assert c.update(0.323) == pytest.approx((0.03 + 0.0003) * e)  # < 0: pulls decisions back on
    assert c.integral == pytest.approx(0.0003 * e)
    # while the error keeps its sign the integral accumulates as before
    c.update(0.323)
    assert c.integral == pytest.approx(2 * 0.0003 * e)


def test_final_decisions_over_budget_give_way_to_the_last_within_it(tmp_path):
    # the same tiny search at 88 ms ends above its budget (88.6 ms; which budget does is the
    # trajectory's, so it moves with the arithmetic); the result is the last decisions that met
    # it, set on the final weights, and the checkpoint agrees
    run = tmp_path / "run"
    cfg = SearchConfig(run_dir=str(run), image_size=8, width_mult=0.5, batch_size=32, epochs=5,
                       dropout_epochs=0.5, steps_per_epoch=32, lr=0.004, log_every=1,
                       progress=False, target_ms=88.0)
    out = io.StringIO()
    result = run_search(cfg, out=out)
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train"]
    assert train[-1]["latency_ms"] > 88.0  # the final decisions
    # the step that started within budget last: the one after the last logged within it
    last = max(r["step"] for r in train[:-1] if r["latency_ms"] <= 88.0)
    assert f"(step {last}, " in out.getvalue()
    assert result["predicted_ms"] == pytest.approx(next(r["latency_ms"] for r in train if r["step"] == last))
    assert main(["derive", str(run), "--out", str(tmp_path / "derived.json")]) == 0
    assert json.loads((tmp_path / "derived.json").read_text())["ops"] == result["arch"].ops


def test_a_search_that_never_met_its_budget_turns_off_the_closest_decisions(tmp_path):
    # a budget under every architecture of the space: no step starts within it, so the result
    # is the final decisions less those closest to off (here: all of them), and derive agrees
    run = tmp_path / "run"
    cfg = SearchConfig(run_dir=str(run), image_size=8, width_mult=0.5, batch_size=32, epochs=2,
                       dropout_epochs=1, steps_per_epoch=8, lr=0.004, progress=False, target_ms=1.0)
    out = io.StringIO()
    result = run_search(cfg, out=out)
    assert "no step of the search stood within --target-ms 1" in out.getvalue()
    net = build_supernet(cfg, 10)
    smallest = ["skip" if b.superkernel.skippable else "k3_e3" for b in net.searchable]
    assert result["arch"].ops == smallest
    assert main(["derive", str(run), "--out", str(tmp_path / "derived.json")]) == 0
    assert json.loads((tmp_path / "derived.json").read_text())["ops"] == smallest
