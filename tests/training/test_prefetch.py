"""GPU-path options that must change no number: batches prefetched in a thread
(`train.prefetch`), `torch.compile` of the networks (`train.compile`), fused optimizers on
CUDA only."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import threading

import pytest
import torch
from conftest import die_writing_last_pt
from test_train import prepared  # noqa: F401  (module fixture: tiny data stages)

from semimed.data import prefetch
from semimed.data.loaders import train_batches
from semimed.data.prefetch import Prefetcher
from semimed.data.taskdata import load_task_data
from semimed.methods import get_method
from semimed.training import speedups
from semimed.training.optimization import build_optimizer
from semimed.training.train import train_run


def _stream(prepared, task, batch_size=2):  # noqa: F811
    cfg, processed, splits = prepared[task]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch_size))
    data = load_task_data(cfg, processed, splits)
    method = get_method(task, "fixmatch" if task == "classification" else "mean_teacher")
    return lambda: train_batches(data, cfg, method, 0, "cpu")


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_prefetched_batches_and_resume_point_are_the_streams(prepared, task):  # noqa: F811
    make = _stream(prepared, task)
    plain, ahead = make(), Prefetcher(make(), depth=3)
    try:
        for _ in range(2):
            assert _equal(next(plain), next(ahead))
        # the thread has drawn up to 3 batches further; the resume point is after 2
        state = ahead.state_dict()
        want = [next(plain) for _ in range(3)]
        assert all(_equal(w, next(ahead)) for w in want)
    finally:
        ahead.close()
    resumed = Prefetcher(make(), depth=2)
    resumed.load_state_dict(state)
    try:
        assert all(_equal(w, next(resumed)) for w in want)
        assert resumed.lab_stream is resumed.stream.lab_stream  # the stream's attributes
    finally:
        resumed.close()


class _Counting:
    """A stream of batches 1, 2, ... whose draw number ``fail_at`` raises; its state the count
    drawn so far."""

    def __init__(self, fail_at: int = 0, device=None):
        self.n, self.fail_at, self.device = 0, fail_at, device

    def state_dict(self):
        return {"n": self.n}

    def __next__(self):
        self.n += 1
        if self.n == self.fail_at:
            raise ValueError("bad volume")
        return self.n


def test_prefetch_raises_the_streams_error_at_that_batch():
    ahead = Prefetcher(_Counting(fail_at=3), depth=4)
    assert [next(ahead), next(ahead)] == [1, 2]
    with pytest.raises(ValueError, match="bad volume"):
        next(ahead)
    with pytest.raises(ValueError):
        Prefetcher(_Counting(), depth=0)


class _RecordingHandoff:
    """`CudaHandoff`'s protocol, recording which thread draws, marks and receives what."""

    def __init__(self):
        self.log, self.inside = [], False

    @contextlib.contextmanager
    def drawing(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False

    def ready(self):
        assert self.inside  # after the batch, still on the side stream
        marker = ("ready", threading.current_thread().name, len(self.log))
        self.log.append(marker)
        return marker

    def receive(self, batch, ready):
        self.log.append(("receive", threading.current_thread().name, batch, ready))


def test_prefetch_hands_each_batch_over_after_its_own_marker():
    """On CUDA the thread draws on a side stream and the loop's stream waits for an event
    recorded after each batch (`CudaHandoff`): each batch is drawn inside ``drawing()`` in
    the prefetch thread, marked there, and received by the loop's thread with its own marker
    before `next()` returns it; a failed draw is raised, not handed over."""
    handoff = _RecordingHandoff()
    ahead = Prefetcher(_Counting(fail_at=4), depth=2, handoff=handoff)
    seen = [next(ahead) for _ in range(3)]
    with pytest.raises(ValueError, match="bad volume"):
        next(ahead)
    assert seen == [1, 2, 3]
    received = [e for e in handoff.log if e[0] == "receive"]
    marks = [e for e in handoff.log if e[0] == "ready"]
    assert len(marks) == 4 and all(m[1] == "prefetch" for m in marks)  # the failed one too
    me = threading.current_thread().name
    assert [(r[1], r[2]) for r in received] == [(me, 1), (me, 2), (me, 3)]
    assert [r[3] for r in received] == marks[:3]  # each batch its own marker, in order


def test_prefetch_picks_the_cuda_handoff_for_cuda_streams_only(monkeypatch):
    """CUDA streams get `CudaHandoff` (its CUDA calls need a GPU: the choice is tested here,
    the handoff itself by the CUDA test below where a GPU is present)."""
    made = []
    monkeypatch.setattr(prefetch.CudaHandoff, "__init__", lambda self, d: made.append(d))
    assert prefetch.handoff_for(_Counting(device="cpu")) is None
    assert prefetch.handoff_for(_Counting()) is None  # no device: a plain iterator
    assert isinstance(prefetch.handoff_for(_Counting(device="cuda:0")), prefetch.CudaHandoff)
    assert made == [torch.device("cuda:0")]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_prefetched_cuda_batches_are_the_streams(prepared, task):  # noqa: F811
    cfg, processed, splits = prepared[task]
    data = load_task_data(cfg, processed, splits)
    method = get_method(task, "fixmatch" if task == "classification" else "mean_teacher")
    make = lambda: train_batches(data, cfg, method, 0, torch.device("cuda"))  # noqa: E731
    plain, ahead = make(), Prefetcher(make(), depth=2)
    try:
        assert isinstance(ahead._handoff, prefetch.CudaHandoff)
        for _ in range(4):
            a, b = next(plain), next(ahead)
            assert all(b[k].is_cuda for k in b) and _equal(a, b)
    finally:
        ahead.close()


def _files(model_dir, live_dir) -> dict:
    """best.pt tensors and DVCLive files (train.json holds the params' fingerprint)."""
    out = {"best": torch.load(model_dir / "best.pt", weights_only=True)}
    for f in sorted(live_dir.rglob("*")):
        if f.is_file():
            out[str(f.relative_to(live_dir))] = f.read_bytes()
    return out


def _same(a: dict, b: dict) -> bool:
    return (
        a.keys() == b.keys()
        and _equal(a["best"], b["best"])
        and all(a[k] == b[k] for k in a if k != "best")
    )


def test_training_with_prefetch_is_identical_and_resumes_exactly(
    prepared,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    cfg, processed, splits = prepared["segmentation"]
    data = load_task_data(cfg, processed, splits)
    files = [processed / "manifest.json", splits]

    def run(name, prefetch, **kw):
        t = dataclasses.replace(cfg.train, prefetch=prefetch, checkpoint_every=1, **kw)
        c = dataclasses.replace(cfg, train=t)
        d = tmp_path / name
        train_run(c, data, "mean_teacher", 0, d / "model", d / "live", files, d / "scratch")
        return _files(d / "model", d / "live")

    plain = run("plain", 0)
    assert _same(run("ahead", 2), plain)

    crash = cfg.train.eval_every  # killed writing that step's last.pt
    die_writing_last_pt(monkeypatch, crash)
    with pytest.raises(KeyboardInterrupt):
        run("killed", 2)
    monkeypatch.undo()
    assert _same(run("killed", 2), plain)  # resumed from step crash - 1, prefetching again


def test_compiled_networks_keep_names_and_numbers(prepared, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(speedups, "COMPILE_BACKEND", "eager")  # no C++ toolchain needed
    cfg, processed, splits = prepared["classification"]
    data = load_task_data(cfg, processed, splits)
    files = [processed / "manifest.json", splits]
    out = {}
    for compiled in (False, True):
        c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compiled))
        d = tmp_path / str(compiled)
        out[compiled] = train_run(c, data, "supervised", 0, d / "m", d / "l", files, d / "s")
        out[compiled, "best"] = torch.load(d / "m" / "best.pt", weights_only=True)
        info = json.loads((d / "m" / "train.json").read_text())
        assert ("compile_first_step_seconds" in info) is compiled
        shutil.rmtree(d / "s")
    assert out[True]["compile_first_step_seconds"] > 0
    assert _equal(out[False, "best"], out[True, "best"])  # same names, same weights


def test_fused_optimizer_only_on_cuda():
    t = dataclasses.make_dataclass("T", ["optimizer", "lr", "momentum", "weight_decay"])
    for name in ("sgd", "adamw"):
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))], t(name, 0.1, 0.9, 0.0))
        assert not opt.defaults.get("fused")  # CPU: PyTorch's default path
    if torch.cuda.is_available():
        p = torch.nn.Parameter(torch.zeros(3, device="cuda"))
        assert build_optimizer([p], t("adamw", 0.1, 0.9, 0.0)).defaults["fused"]


def test_segmentation_crops_without_metadata_are_the_same_batches(prepared, monkeypatch):  # noqa: F811
    """The stream crops with MONAI's metadata tracking off (`track_meta.plain_tensors`): the
    same batches as with it on, and the global setting is restored after each batch."""
    import contextlib

    from monai.data import get_track_meta

    from semimed.data import loaders

    make = _stream(prepared, "segmentation")
    fast = make()
    fast_batches = [next(fast) for _ in range(4)]
    assert get_track_meta() is True
    monkeypatch.setattr(loaders, "plain_tensors", contextlib.nullcontext)
    slow = make()
    assert all(_equal(a, next(slow)) for a in fast_batches)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_channels_last_runs_the_same_model(prepared, tmp_path, monkeypatch, task):  # noqa: F811
    """`train.channels_last`: the loop restrides every network's conv weights (NHWC / NDHWC)
    before the optimizer sees them and trains; one step of the restrided method gives the
    contiguous one's loss and gradients within float rounding (the conv kernels differ)."""
    from semimed import build

    cfg, processed, splits = prepared[task]
    data = load_task_data(cfg, processed, splits)
    files = [processed / "manifest.json", splits]
    fmt = torch.channels_last_3d if data.spatial_dims == 3 else torch.channels_last

    def convs(method):
        return [p for p in method.parameters() if p.dim() == data.spatial_dims + 2]

    seen = []
    real = speedups.to_channels_last

    def spy(method, spatial_dims):
        real(method, spatial_dims)
        seen.append(all(p.is_contiguous(memory_format=fmt) for p in convs(method)))

    monkeypatch.setattr(speedups, "to_channels_last", spy)
    c = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, channels_last=True))
    summary = train_run(c, data, "mean_teacher", 0, tmp_path / "m", tmp_path / "l", files)
    assert seen == [True] and summary["last_step"] == cfg.train.steps

    cls = build.method_class(task, "mean_teacher")
    batch = next(train_batches(data, cfg, build.stream_spec(cls), 0, torch.device("cpu")))
    grads = {}
    for on in (False, True):
        torch.manual_seed(0)
        method = build.method_for_data(cfg, data, cls)
        if on:
            real(method, data.spatial_dims)
        torch.manual_seed(1)  # the same dropout masks
        loss = method.training_step(batch, 0)["loss"]
        loss.backward()
        grads[on] = (loss.detach(), [p.grad.clone() for p in convs(method) if p.requires_grad])
    assert grads[True][1] and torch.allclose(grads[True][0], grads[False][0], rtol=1e-5)
    for a, b in zip(grads[True][1], grads[False][1], strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def test_plain_tensors_from_two_threads_restores_the_flag():
    """The main thread and a prefetch thread crop at once, the main thread leaving first (the
    interleaving that left MONAI's process-wide flag off when each saved and restored it)."""
    import threading

    from monai.data import get_track_meta

    from semimed.data.track_meta import plain_tensors

    inside, leave = threading.Event(), threading.Event()

    def worker():
        with plain_tensors():
            inside.set()
            leave.wait(5)

    assert get_track_meta() is True
    with plain_tensors():
        thread = threading.Thread(target=worker)
        thread.start()
        assert inside.wait(5) and get_track_meta() is False
    assert get_track_meta() is False  # the worker is still cropping
    leave.set()
    thread.join(5)
    assert get_track_meta() is True
