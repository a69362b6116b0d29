"""The training budget (steps, epochs), early stopping, the convergence diagnostics in
train.json, and the loop's refusal to step on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from test_data_and_train import prepared  # noqa: F401  (module fixture: tiny data stages)

from semimed import convergence, distributed
from semimed.data.taskdata import load_task_data
from semimed.train import train_run


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


def _cfg(prepared, task, **train):  # noqa: F811
    cfg, processed, splits = prepared[task]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))
    return cfg, load_task_data(cfg, processed, splits), [processed / "manifest.json", splits]


def test_early_stop_and_diagnostics_in_train_json(prepared, tmp_path):  # noqa: F811
    # no score beats the best by 2.0: patience 1 ends the run at the first validation >= 4
    cfg, data, files = _cfg(
        prepared, "classification", steps=12, eval_every=2, patience=1, min_steps=4, min_delta=2.0
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


def test_epochs_budget_follows_the_largest_pool(prepared, tmp_path):  # noqa: F811
    cfg, data, files = _cfg(prepared, "classification", steps=500, epochs=1.0, eval_every=500)
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
    from semimed import optimization

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
