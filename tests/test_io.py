import json

import pytest

from semimed.io import atomic_dir, write_json_atomic


def test_write_json_atomic_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["m.json"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("crash mid-stage")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]  # old output intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp left
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["c.txt"]


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    from semimed import io

    out = tmp_path / "a.png"
    out.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError):
        io.write_bytes_atomic(out, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    assert out.read_bytes() == b"old"
