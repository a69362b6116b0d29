"""The plots a DVC user sees: training curves against the logged step, no empty charts, the
per-method comparisons with their custom templates (.dvc/plots/), and a page that renders
offline (assets/vega/offline.html; scripts/check_plots_offline.sh in headless Chromium when
it is installed). The page test renders records shaped like the stages' in a temporary copy
of the repository: a few seconds, no training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from dvc_render.vega_templates import TEMPLATES
from test_pipeline_e2e import ROOT, run, tiny_repo

from semimed import paths

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
BUILTIN = {t.DEFAULT_NAME for t in TEMPLATES}  # DVC's own: linear, confusion, scatter, ...
CUSTOM = {p.stem for p in (ROOT / ".dvc" / "plots").glob("*.json")}
KINDS = ("noise", "blur")


def _plots(stage: dict) -> dict[str, dict]:
    found = {}
    for entry in stage.get("plots", []):
        path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        found[path] = opts or {}
    return found


def _expand(path: str) -> str:
    return path.replace("${item.method}", "M").replace("${item.seed}", "7")


def _live_curves(task: str, method: str, seed: int) -> Path:
    """A run's DVCLive curves folder: two up from the TSV `paths.val_curve` reads."""
    return paths.val_curve(paths.live_dir(task, method, seed), "m").parents[1]


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_training_curves_are_drawn_against_the_logged_step(task):
    stage = STAGES[f"train_{task}"]
    plots = {_expand(p): opts for p, opts in _plots(stage).items()}
    outs = {_expand(next(iter(e)) if isinstance(e, dict) else e) for e in stage.get("outs", [])}
    assert plots.get(str(_live_curves(task, "M", 7)), {}).get("x") == "step"
    # DVCLive's metrics.json (last values) is a cached output: inside a plots folder it drew
    # empty charts, as a metric it widened `dvc metrics show`
    summary = str(paths.live_summary(task, "M", 7))
    assert summary in outs
    assert not any(summary.startswith(p) for p in plots)


def test_every_template_exists_and_fills_the_data_anchor():
    for name, stage in STAGES.items():
        for path, opts in _plots(stage).items():
            template = opts.get("template")
            assert template is None or template in BUILTIN | CUSTOM, f"{name}: {path}: {template}"
    for stem in CUSTOM:
        text = (ROOT / ".dvc" / "plots" / f"{stem}.json").read_text()
        spec = json.loads(text)
        assert spec["data"] == {"values": "<DVC_METRIC_DATA>"}, stem
        assert "<DVC_METRIC_X>" in text and "<DVC_METRIC_Y>" in text, stem


def _write_records(repo: Path) -> None:
    """Records in the shapes the report, analyze and train stages write (see their docs)."""
    methods, seeds = ["supervised", "fixmatch"], [0, 1]
    for task, headline in (("classification", "balanced_accuracy"), ("segmentation", "dice")):
        rows = [
            {"method": m, "seed": s, headline: 0.6 + 0.1 * i + 0.01 * s}
            for i, m in enumerate(methods)
            for s in seeds
        ]
        curves = [
            {"method": m, "seed": s, "step": step, "val": 0.3 + 0.001 * step + 0.05 * i}
            for i, m in enumerate(methods)
            for s in seeds
            for step in (50, 100, 150)
        ]
        for path, data in (
            (paths.report_methods(task), rows),
            (paths.report_val_curves(task), curves),
        ):
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_text(json.dumps(data))
    robustness = [
        {"method": m, "seed": s, "kind": k, "strength": x, "balanced_accuracy": 0.9 - x / 2}
        for m in methods
        for s in seeds
        for k in KINDS
        for x in (0.0, 0.5, 1.0)
    ]
    (repo / paths.ROBUSTNESS).parent.mkdir(parents=True, exist_ok=True)
    (repo / paths.ROBUSTNESS).write_text(json.dumps(robustness))
    curves = repo / _live_curves("classification", "supervised", 0)
    for part, name in (("train", "loss"), ("val", "balanced_accuracy")):
        (curves / part).mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{1000 + s}\t{s}\t{1 / s}\n" for s in (50, 100, 150))
        (curves / part / f"{name}.tsv").write_text(f"timestamp\tstep\t{name}\n{rows}")
    live = repo / paths.live_summary("classification", "supervised", 0)
    live.write_text(json.dumps({"train": {"loss": 0.1}, "step": 150}))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots")
    repo, env = tiny_repo(tmp, TINY)
    _write_records(repo)
    # stdout only: stderr lists the plots of runs this copy has not made
    shown = subprocess.run(
        ["dvc", "plots", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True
    )
    data = json.loads(shown.stdout)["data"]
    run(["dvc", "plots", "show", "-o", "html"], repo, env)  # .dvc/config's html_template
    return repo, data


def test_plots_render_with_their_templates(page):
    _, data = page
    drawn = {k: v[0]["content"] for k, v in data.items() if v and "content" in v[0]}
    assert all(not k.endswith("metrics.json") for k in data)  # no empty DVCLive charts
    live = paths.live_dir("classification", "supervised", 0)
    curve = str(paths.val_curve(live, "balanced_accuracy"))
    assert drawn[curve]["encoding"]["x"]["field"] == "step"
    assert [r["step"] for r in drawn[curve]["data"]["values"]] == ["50", "100", "150"]
    sweep = drawn[str(paths.ROBUSTNESS)]
    assert sweep["facet"]["column"]["field"] == "kind"  # one panel per perturbation
    assert sweep["spec"]["encoding"]["color"]["field"] == "method"  # one colour per method
    for task in ("classification", "segmentation"):
        methods = drawn[str(paths.report_methods(task))]
        assert methods["encoding"]["x"]["field"] == "method"
        assert {r["method"] for r in methods["data"]["values"]} == {"supervised", "fixmatch"}
        curves = drawn[str(paths.report_val_curves(task))]
        assert curves["encoding"]["color"]["field"] == "method"
        assert {"seed", "rev"} <= {d["field"] for d in curves["encoding"]["detail"]}


def test_page_loads_no_script_from_the_network(page):
    repo, data = page
    html = (repo / "html" / "index.html").read_text()
    assert "cdn.jsdelivr" not in html and 'src="http' not in html
    assert html.count("vegaEmbed(") >= 7  # report x 4, robustness, 2 DVCLive curves
    assert "vega-lite@5" in html  # the vendored libraries are inlined


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="headless Chromium not installed (Debian: apt-get install chromium)",
)
def test_page_draws_its_charts_offline_in_chromium(page):
    repo, _ = page
    out = subprocess.run(
        [str(ROOT / "scripts" / "check_plots_offline.sh"), str(repo / "html" / "index.html")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "charts drawn offline" in out.stdout
