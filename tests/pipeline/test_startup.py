"""Start-up cost: the data stages that need neither torch nor MONAI do not import them (each
costs seconds per stage: torch ~1.5 s, MONAI ~0.4 s more with `semimed.process`), and
DVC parses YAML with libyaml (a no-op `dvc repro` reads params.yaml once per stage)."""

from __future__ import annotations

import copy
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, merge

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "monai", "torchvision")
# Runs a stage as `python stages/<name>.py ...` would, then prints the heavy modules loaded.
PROBE = (
    "import json, runpy, sys\n"
    "script, sys.argv = sys.argv[1], sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(script, run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    if e.code: raise\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
)


def heavy_imports(stage: str, args: list[str], cwd: Path) -> list[str]:
    """The heavy modules a stage script loaded, run in a fresh interpreter in `cwd`."""
    script = str(ROOT / "stages" / f"{stage}.py")
    cmd = [sys.executable, "-c", PROBE, script, *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, default_params):
    work = tmp_path_factory.mktemp("startup")
    params = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_ingest_and_split_import_neither_torch_nor_monai(task, workdir):
    """The synthetic ingest and the split stage, run for real (the split needs the
    preprocess stage's manifest, made in between; that stage does use MONAI)."""
    assert heavy_imports("ingest", ["--task", task], workdir) == []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.setattr(sys, "argv", ["preprocess", "--task", task])
        runpy.run_path(str(ROOT / "stages" / "preprocess.py"), run_name="__main__")
    assert heavy_imports("split", ["--task", task], workdir) == []
    assert (workdir / "data" / task / "splits.json").is_file()


def test_report_stage_module_imports_neither(workdir):
    """The report stage's own imports (its run needs every evaluated run: not here)."""
    assert heavy_imports("report", ["--help"], workdir) == []


def test_dvc_parses_yaml_with_libyaml():
    """ruamel.yaml >= 0.19 no longer pulls its C parser; without it DVC's pure-Python parser
    takes ~1.5 s of a 3.5 s no-op `dvc repro` (requirements.lock: ruamel.yaml.clib)."""
    from ruamel.yaml import YAML

    assert "CParser" in YAML(typ="safe").Parser.__name__
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert any(line.startswith("ruamel.yaml.clib==") for line in lock)
