"""The training budget (steps, epochs), the stop rule (smoothed early stopping, the fixed
protocol), the convergence diagnostics in train.json, and the loop's refusal to step on a
non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from test_train import prepared  # noqa: F401  (module fixture: tiny data stages)

from semimed.build import parse_task
from semimed.config import ConfigError
from semimed.data.taskdata import load_task_data
from semimed.training import convergence, distributed
from semimed.training.train import train_run


def test_budget_rule():
    assert convergence.budget(300, None, [(10, 4)]) == 300  # steps alone
    # the longest epoch: 100 unlabeled / 8 per step = 13 steps; 2.5 epochs -> 33
    assert convergence.budget(300, 2.5, [(10, 4), (100, 8)]) == 33
    assert convergence.budget(20, 2.5, [(10, 4), (100, 8)]) == 20  # steps is the maximum
    assert convergence.budget(300, 0.01, [(10, 4)]) == 1


def test_tracker_converged_rule_and_patience():
    t = convergence.Tracker(patience=0, min_steps=0, min_delta=0.01)
    for step, score in [(10, 0.5), (20, 0.6), (30, 0.7), (40, 0.8)]:
        assert not t.validated(step, score)  # patience 0: never stops
    still = t.report(40)
    assert not still["converged"] and still["last_quarter_gain"] == pytest.approx(0.1)
    assert still["trend_per_1k_steps"] == 0.0 and still["best_step"] == 40  # one point: no slope
    t = convergence.Tracker(patience=0, min_steps=0, min_delta=0.01)
    for step, score in [(10, 0.5), (20, 0.8), (30, 0.805), (40, 0.79), (50, 0.8), (60, 0.8)]:
        t.validated(step, score)
    flat = t.report(60)  # last quarter = ceil(6/4) = 2 validations, best 0.8 <= 0.805 + 0.01
    assert flat["converged"] and flat["best_step"] == 30 and flat["evaluations"] == 6
    one = convergence.Tracker(0, 0, 0.0)
    one.validated(5, 0.9)
    assert not one.report(5)["converged"]  # one validation cannot tell

    stop = convergence.Tracker(patience=2, min_steps=40, min_delta=0.0)
    calls = [stop.validated(s, v) for s, v in [(10, 0.5), (20, 0.4), (30, 0.4), (40, 0.5)]]
    assert calls == [False, False, False, True]  # bad 1, 2 (< min_steps), 3 -> stop at 40
    assert stop.report(40)["converged"] and stop.report(40)["stopped_early"]
    restored = convergence.Tracker(2, 40, 0.0)
    restored.load_state_dict(stop.state_dict())
    assert restored.report(40) == stop.report(40)


def _series(slope: float, noise: float, seed: int, n: int = 80) -> list[float]:
    """Validation scores: a fast rise to 0.8 in 6 validations, then `slope` per validation,
    plus Gaussian noise of std `noise`."""
    rng = random.Random(seed)
    return [
        min(0.8, 0.5 + 0.05 * i) + slope * max(0, i - 6) + rng.gauss(0, noise) for i in range(n)
    ]


def _stop_at(tracker, scores) -> int | None:
    """The validation (1-based, every 100 steps) at which `tracker` stops, or None."""
    for i, score in enumerate(scores, start=1):
        if tracker.validated(100 * i, score):
            return i
    return None


def _cpu_like() -> convergence.Tracker:  # the cpu preset's classification rule
    return convergence.Tracker(patience=8, min_steps=600, min_delta=0.002, smooth=5)


@pytest.mark.parametrize("seed", range(10))
def test_a_creeping_validation_curve_is_not_stopped(seed):
    """+0.0005 per validation (a quarter of min_delta) with noise of 0.002: a slow, steady
    climb. The score to beat moves only on a gain of more than min_delta, so the climb counts;
    raising it on every gain (the rule this replaced) stopped every such run."""
    scores = _series(0.0005, 0.002, seed)
    assert _stop_at(_cpu_like(), scores) is None


@pytest.mark.parametrize("seed", range(10))
def test_a_flat_noisy_validation_curve_is_stopped(seed):
    """Flat after the rise, with noise (std 0.01) five times min_delta: patience ends the run,
    after at least patience validations and well before the 80th."""
    stop = _stop_at(_cpu_like(), _series(0.0, 0.01, seed))
    assert stop is not None and 9 <= stop <= 55, stop


def test_score_to_beat_moves_only_on_an_improvement_beyond_min_delta():
    t = convergence.Tracker(patience=3, min_steps=0, min_delta=0.01)
    # +0.004 per validation: 0.508 does not beat 0.5 by 0.01, 0.512 does (the bad count resets)
    calls = [t.validated(s, v) for s, v in [(1, 0.5), (2, 0.504), (3, 0.508), (4, 0.512)]]
    assert calls == [False] * 4 and t.bad == 0 and t.to_beat == pytest.approx(0.512)
    falling = [t.validated(s, v) for s, v in [(5, 0.50), (6, 0.50), (7, 0.49)]]
    assert falling == [False, False, True]  # 3 without one, the curve no longer rising


def test_a_still_rising_smoothed_curve_is_not_stopped_by_patience():
    t = convergence.Tracker(patience=2, min_steps=0, min_delta=0.05, smooth=1)
    # no gain of 0.05 in two validations, but the last 4 scores still rise: go on
    assert [t.validated(s, v) for s, v in [(1, 0.5), (2, 0.48), (3, 0.52), (4, 0.54)]] == [
        False
    ] * 4
    assert t.bad == 3
    assert t.validated(5, 0.40)  # no longer rising: stop


def test_smoothed_curve_judges_convergence_and_the_raw_score_the_best_step():
    # one lucky spike: the raw best is at step 20, the running mean of 3 still rises after it
    t = convergence.Tracker(patience=0, min_steps=0, min_delta=0.0, smooth=3)
    for s, v in [(10, 0.5), (20, 0.9), (30, 0.6), (40, 0.7), (50, 0.7)]:
        t.validated(s, v)
    assert t.curve() == pytest.approx([0.5, 0.7, 2 / 3, 2.2 / 3, 2 / 3])
    report = t.report(50)
    assert report["best_step"] == 20 and report["smooth"] == 3
    # last quarter (2 validations): best smoothed 0.733 vs 0.7 before: still improving (the
    # raw scores, 0.7 vs the spike's 0.9, would call it converged)
    assert report["last_quarter_gain"] == pytest.approx(2.2 / 3 - 0.7, abs=1e-6)
    assert not report["converged"]


def test_tracker_resumes_also_from_a_state_dict_without_the_rule_state():
    ran = _cpu_like()
    _stop_at(ran, _series(0.0, 0.01, 3))
    restored = _cpu_like()
    restored.load_state_dict(ran.state_dict())
    assert restored.state_dict() == ran.state_dict() and restored.report(1) == ran.report(1)
    old = {k: v for k, v in ran.state_dict().items() if k != "to_beat"}  # an older checkpoint
    again = _cpu_like()
    again.load_state_dict(old)
    assert again.state_dict() == ran.state_dict()


def _T(**kw) -> SimpleNamespace:  # a train section as the loop sees it
    return SimpleNamespace(
        **dict(patience=4, min_steps=0, min_delta=0.0, smooth=2, stop="early") | kw
    )


def test_fixed_protocol_never_stops_early():
    fixed = convergence.Tracker.for_train(_T(stop="fixed"))
    early = convergence.Tracker.for_train(_T())
    assert fixed.patience == 0 and early.patience == 4 and fixed.smooth == early.smooth == 2
    scores = _series(0.0, 0.01, 0, n=40)
    assert _stop_at(fixed, scores) is None and _stop_at(early, scores) is not None


def test_default_config_keeps_the_raw_rule_and_no_early_stop(params):
    """conf/config.yaml (the demo): stop fixed, smooth 1, so the diagnostics are those of the
    raw scores, computed as before (best of the last quarter vs the best before it), and no
    run stops early: the demo's budget and checkpoints do not change."""
    for task in ("classification", "segmentation"):
        t = parse_task(task, params[task]).train
        assert (t.stop, t.smooth, t.epochs) == ("fixed", 1, None)
        tracker = convergence.Tracker.for_train(t)
        scores = _series(0.0, 0.02, 1, n=8)
        assert _stop_at(tracker, scores) is None
        q = math.ceil(8 / 4)
        gain = max(scores[-q:]) - max(scores[:-q])
        report = tracker.report(800)
        assert report["last_quarter_gain"] == pytest.approx(round(gain, 6))
        assert report["converged"] == (gain <= t.min_delta)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"stop": "later"}, "classification.train.stop: must be one of early, fixed; got 'later'"),
        ({"stop": "fixed", "epochs": 2.0}, "classification.train.epochs: must be null when stop"),
        ({"smooth": 0}, "classification.train.smooth: must be"),
    ],
)
def test_stop_keys_are_checked(params, train, message):
    params["classification"]["train"].update(train)
    with pytest.raises(ConfigError) as exc:
        parse_task("classification", params["classification"])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def _cfg(prepared, task, **train):  # noqa: F811
    cfg, processed, splits = prepared[task]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
    return cfg, load_task_data(cfg, processed, splits), [processed / "manifest.json", splits]


def test_early_stop_and_diagnostics_in_train_json(prepared, tmp_path):  # noqa: F811
    # no score beats the best by 2.0: patience 1 ends the run at the first validation >= 4
    cfg, data, files = _cfg(
        prepared,
        "classification",
        stop="early",
        steps=12,
        eval_every=2,
        patience=1,
        min_steps=4,
        min_delta=2.0,
    )
    summary = train_run(cfg, data, "supervised", 0, tmp_path / "m", tmp_path / "l", files)
    assert summary["last_step"] == 4 and summary["max_steps"] == 12
    conv = summary["convergence"]
    assert conv["stopped_early"] and conv["converged"] and conv["evaluations"] == 2
    assert json.loads((tmp_path / "m" / "train.json").read_text())["convergence"] == conv
    # the finished run restores from its checkpoint alone (what DVC's removal of outputs needs)
    (tmp_path / "m" / "train.json").unlink()
    (tmp_path / "m" / "best.pt").unlink()
    again = train_run(cfg, data, "supervised", 0, tmp_path / "m", tmp_path / "l", files)
    wall = ("seconds",)  # the restored record was written a moment before the returned one
    assert {k: v for k, v in again.items() if k not in wall} == {
        k: v for k, v in summary.items() if k not in wall
    }
    assert (tmp_path / "m" / "best.pt").is_file()


def test_fixed_protocol_gives_every_method_the_same_steps(prepared, tmp_path):  # noqa: F811
    """The rule above would stop each of these runs at step 4 (no gain of 2.0 is possible);
    with train.stop fixed, patience is ignored and every method trains train.steps steps."""
    stopping = dict(steps=8, eval_every=2, patience=1, min_steps=4, min_delta=2.0)
    cfg, data, files = _cfg(prepared, "classification", stop="fixed", **stopping)
    runs = {
        m: train_run(cfg, data, m, 0, tmp_path / m, tmp_path / f"{m}_live", files)
        for m in ("supervised", "fixmatch", "supervised_full")
    }
    assert {m: r["last_step"] for m, r in runs.items()} == dict.fromkeys(runs, 8)
    assert not any(r["convergence"]["stopped_early"] for r in runs.values())
    cfg, data, files = _cfg(prepared, "classification", stop="early", **stopping)
    early = train_run(cfg, data, "fixmatch", 0, tmp_path / "e", tmp_path / "e_live", files)
    assert early["last_step"] == 4 and early["convergence"]["stopped_early"]


def test_epochs_budget_follows_the_largest_pool(prepared, tmp_path):  # noqa: F811
    cfg, data, files = _cfg(
        prepared, "classification", stop="early", steps=500, epochs=1.0, eval_every=500
    )
    runs = {
        m: train_run(cfg, data, m, 0, tmp_path / m, tmp_path / f"{m}_live", files)
        for m in ("supervised", "supervised_full")
    }
    b = cfg.train.batch_size
    labeled = len(data.split["train_labeled"])
    everything = labeled + len(data.split["train_unlabeled"])
    assert runs["supervised"]["budget_steps"] == math.ceil(labeled / b)
    assert runs["supervised_full"]["budget_steps"] == math.ceil(everything / b)
    assert runs["supervised_full"]["last_step"] > runs["supervised"]["last_step"]


@pytest.mark.parametrize("sync_free", [False, True])
def test_nonfinite_steps_are_skipped_then_stop_the_run(
    prepared,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
    sync_free,
):
    """A NaN loss at step 2 is skipped (weights untouched) and counted; a run of NaN losses
    stops the run with one clear line. ``sync_free``: the same with the fused optimizer the
    loop uses on a GPU (forced on the CPU here), which skips the update on the device and
    counts the skips at the next validation."""
    from semimed.training import optimization

    real = distributed.step_function
    poisoned = {2}
    if sync_free:

        def fused(params, t):
            assert t.optimizer == "adamw"
            return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=True)

        monkeypatch.setattr(optimization, "build_optimizer", fused)

    def step_function(method, device, world):
        fn = real(method, device, world)

        def step(batch, i):
            terms = fn(batch, i)
            if i in poisoned:
                terms["loss"] = terms["loss"] * float("nan")
            return terms

        return step

    monkeypatch.setattr(distributed, "step_function", step_function)
    cfg, data, files = _cfg(prepared, "classification", steps=4, eval_every=4)
    summary = train_run(cfg, data, "supervised", 0, tmp_path / "a", tmp_path / "al", files)
    assert summary["convergence"]["skipped_steps"] == 1
    out = capsys.readouterr().out
    if sync_free:
        assert "1 update(s) skipped (non-finite loss or gradients) by step 4" in out
    else:
        assert "non-finite loss or gradients at step 3; update skipped" in out
    assert math.isfinite(summary["best_val_balanced_accuracy"])
    weights = torch.load(tmp_path / "a" / "best.pt", weights_only=True)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())

    poisoned.update(range(1, 4))  # after step 0's update: the sync-free path runs them
    cfg, data, files = _cfg(prepared, "classification", steps=8, eval_every=4, max_nonfinite=3)
    with pytest.raises(RuntimeError, match="3 steps in a row with a non-finite loss"):
        train_run(cfg, data, "supervised", 0, tmp_path / "b", tmp_path / "bl", files)
