"""The light MONAI import of the processes semimed starts (`semimed.process`): MONAI's
eager load of every subpackage is skipped, the extras only unused MONAI features need are
not imported, the MONAI parts semimed uses work, the extras import normally afterwards, a
failing light load falls back to MONAI's own load, and every torch stage script gets it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("torchvision", "matplotlib", "sklearn", "requests", "scipy.signal")


def probe(code: str, env: dict | None = None) -> dict:
    """Run `code` in a fresh interpreter; it ends by printing one JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]) | {"stderr": out.stderr}


LOADED = (
    "import json, sys\n"
    "print(json.dumps({'eager': 'monai.auto3dseg' in sys.modules,\n"
    f"    'extras': [m for m in {EXTRAS!r} if m in sys.modules]}}))\n"
)


def test_light_import_skips_eager_load_and_extras_then_works():
    code = (
        "from semimed import process\n"
        "process.install_light_monai()\n"
        "import torch\n"
        "from monai.networks.nets import UNet\n"
        "from monai.transforms import Compose, RandCropByLabelClassesd\n"
        "from monai.losses import DiceLoss\n"
        "from monai.inferers import sliding_window_inference\n"
        "import sys, json\n"
        "state = {'eager': 'monai.auto3dseg' in sys.modules,\n"
        f"    'extras': [m for m in {EXTRAS!r} if m in sys.modules]}}\n"
        "net = UNet(3, 1, 2, (4, 8), (2,))\n"
        "x = torch.rand(1, 1, 16, 16, 16)\n"
        "y = sliding_window_inference(x, (8, 8, 8), 2, net)\n"
        "loss = DiceLoss(softmax=True, to_onehot_y=True)(y, torch.zeros(1, 1, 16, 16, 16))\n"
        "import torchvision, matplotlib.pyplot, sklearn.metrics\n"
        "import monai.auto3dseg\n"  # any other MONAI subpackage still imports on demand
        "state['finder_left'] = any(type(f).__name__ == '_LightMonai' for f in sys.meta_path)\n"
        "state['shape'] = list(y.shape)\n"
        "state['finite'] = bool(torch.isfinite(loss))\n"
        "print(json.dumps(state))\n"
    )
    state = probe(code)
    assert state["eager"] is False
    assert state["extras"] == []
    assert state["shape"] == [1, 2, 16, 16, 16] and state["finite"]
    assert state["finder_left"] is False  # it removes itself once MONAI is loaded


def test_without_install_or_with_opt_out_monai_loads_everything():
    plain = probe("import monai.transforms\n" + LOADED)
    assert plain["eager"] is True and "torchvision" in plain["extras"]
    code = "from semimed import process\nprocess.install_light_monai()\nimport monai\n" + LOADED
    opted_out = probe(code, env={"SEMIMED_MONAI_EAGER": "1"})
    assert opted_out["eager"] is True


def test_failing_light_load_falls_back_to_monai_eager_load():
    code = (
        "from semimed import process\n"
        "process.SUBPACKAGES = ('apps', 'no_such_subpackage')\n"
        "process.install_light_monai()\n"
        "from monai.networks.nets import UNet\n" + LOADED
    )
    state = probe(code)
    assert state["eager"] is True
    assert "light MONAI import failed" in state["stderr"]


@pytest.mark.parametrize("stage", ["train", "evaluate", "preprocess", "analyze", "predict"])
def test_every_torch_stage_script_gets_the_light_import(stage):
    """The stage scripts import `semimed.cli` (which installs it) before anything imports
    MONAI; a reordered import would silently bring back ~2.5 s per stage."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['stages/{stage}.py', '--help']\n"
        "try:\n"
        f"    runpy.run_path('stages/{stage}.py', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'monai' in sys.modules\n" + LOADED
    )
    state = probe(code)
    assert state["eager"] is False
    assert "torchvision" not in state["extras"]
