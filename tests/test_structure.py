"""The layout's rules, checked statically (`ast`), so they stay true as the code grows.

* imports run one way: config is a leaf, data and config never import methods, the build
  layer, or the loop; evaluation, analysis, prediction and reporting never import the loop;
* modules stay small (src/semimed: <= 300 lines a module, <= 80 a function, <= 8 modules at
  the top level beside the packages; stages < 100 lines);
* every stage's dvc.yaml deps cover the modules it imports (transitively), so a change to
  any of them re-runs the stage;
* the stages' outputs in dvc.yaml are the paths `semimed.paths` gives.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PKG = SRC / "semimed"


def _module_file(name: str) -> Path | None:
    """The file of module `name` inside src/, or None for modules outside semimed."""
    if not name.startswith("semimed"):
        return None
    base = SRC.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def direct_imports(path: Path) -> set[Path]:
    """Files inside semimed that `path` imports (any import statement, also in functions)."""
    tree = ast.parse(path.read_text())
    here = _module_name(path) if path.is_relative_to(SRC) else ""
    found: set[Path] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                pkg = here.split(".")
                if path.name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                mod = ".".join([*pkg, mod] if mod else pkg)
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            # the module itself and every parent package's __init__ run on import
            parts = name.split(".")
            for k in range(1, len(parts) + 1):
                f = _module_file(".".join(parts[:k]))
                if f is not None:
                    found.add(f)
    found.discard(path)
    return found


def closure(path: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [path]
    while todo:
        for f in direct_imports(todo.pop()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def _rel(paths) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in paths}


def _imports_any(path: Path, prefixes: tuple[str, ...], transitive: bool) -> list[str]:
    files = closure(path) if transitive else direct_imports(path)
    return sorted(f for f in _rel(files) if f.startswith(prefixes))


LOOP = ("src/semimed/training/train.py", "src/semimed/training/optimization.py")
METHODS_AND_UP = ("src/semimed/methods", "src/semimed/build.py", *LOOP)


@pytest.mark.parametrize("path", sorted((PKG / "config").rglob("*.py")), ids=str)
def test_config_is_a_leaf(path):
    inside = ("src/semimed/config", "src/semimed/__init__.py")  # the root package runs first
    outside = [f for f in _rel(direct_imports(path)) if not f.startswith(inside)]
    assert not outside, f"{path.relative_to(ROOT)} imports {outside}"


@pytest.mark.parametrize("path", sorted((PKG / "data").rglob("*.py")), ids=str)
def test_data_never_imports_methods(path):
    bad = _imports_any(path, METHODS_AND_UP, transitive=True)
    assert not bad, f"{path.relative_to(ROOT)} reaches {bad}"


NO_LOOP = [
    *sorted((PKG / "evaluate").rglob("*.py")),
    *sorted((PKG / "report").rglob("*.py")),
    *sorted((PKG / "analysis").rglob("*.py")),
    PKG / "inference.py",
    PKG / "build.py",
    ROOT / "stages" / "evaluate.py",
    ROOT / "stages" / "analyze.py",
    ROOT / "stages" / "report.py",
    *sorted((PKG / "serving").rglob("*.py")),
]


@pytest.mark.parametrize("path", NO_LOOP, ids=str)
def test_evaluation_never_imports_the_loop(path):
    bad = _imports_any(path, LOOP, transitive=True)
    assert not bad, f"{path.relative_to(ROOT)} reaches the training loop: {bad}"


@pytest.mark.parametrize("stage", ["ingest", "preprocess", "report"])
def test_data_stages_do_not_import_methods(stage):
    bad = _imports_any(ROOT / "stages" / f"{stage}.py", METHODS_AND_UP, transitive=True)
    assert not bad, f"stages/{stage}.py reaches {bad}"


def _module_level_imports(path: Path) -> set[Path]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            names = [mod] if mod else [a.name for a in node.names]
            names += [f"{mod}.{a.name}" for a in node.names] if mod else []
            for name in names:
                f = _module_file(name)
                if f is not None:
                    found.add(f)
    return found


def test_split_stage_imports_methods_only_lazily():
    """split needs the registry only when the unlabeled pool is empty (a function-level
    import): its module-level imports must not reach methods."""
    reached = set()
    for f in _module_level_imports(ROOT / "stages" / "split.py"):
        reached |= {f} | closure(f)
    bad = [f for f in _rel(reached) if f.startswith(METHODS_AND_UP)]
    assert not bad, bad


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=str)
def test_library_modules_are_small(path):
    n = len(path.read_text().splitlines())
    assert n <= 300, f"{path.relative_to(ROOT)}: {n} lines (split it by job)"


FUNCTION_LINES = 80


@pytest.mark.parametrize(
    "path", [*sorted(PKG.rglob("*.py")), *sorted((ROOT / "stages").glob("*.py"))], ids=str
)
def test_functions_fit_on_a_screen(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES
    ]
    assert not long, f"{path.relative_to(ROOT)}: {long} (name its steps)"


def test_top_level_holds_packages_and_few_modules():
    """The package's top level shows the architecture: sub-packages by job, and at most a
    handful of modules every layer shares (paths, tasks, io, runtime, ...)."""
    modules = sorted(p.name for p in PKG.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 8, modules


@pytest.mark.parametrize("path", sorted((ROOT / "stages").glob("*.py")), ids=str)
def test_stages_are_thin(path):
    n = len(path.read_text().splitlines())
    assert n < 100, f"{path.relative_to(ROOT)}: {n} lines"


# --------------------------------------------------------------------------- dvc.yaml
def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _script(stage: dict) -> Path:
    cmd = stage["cmd"].split()
    return ROOT / cmd[cmd.index("python") + 1]


def _covered(f: str, deps: list[str]) -> bool:
    return any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_its_imports(name):
    stage = _stages()[name]
    script = _script(stage)
    deps = [d for d in stage.get("deps", []) if isinstance(d, str)]
    found = closure(script)
    if PKG / "methods" / "__init__.py" in found:  # the stage's task registry, imported lazily
        task = "segmentation" if "segmentation" in name else "classification"
        registry = PKG / "methods" / task / "__init__.py"
        found |= {registry} | closure(registry)
    needed = {str(script.relative_to(ROOT))} | _rel(found)
    missing = sorted(f for f in needed if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {name}: deps miss {missing}"


def _outs(stage: dict) -> set[str]:
    found = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            found.add(entry if isinstance(entry, str) else next(iter(entry)))
    return found


def test_stage_outputs_are_the_paths_module_layout():
    from semimed import paths

    stages = _stages()
    item = {"${item.method}": "M", "${item.seed}": "7"}

    def expand(p: str) -> str:
        for k, v in item.items():
            p = p.replace(k, v)
        return p

    for task in ("classification", "segmentation"):
        assert {str(paths.ingested(task))} == _outs(stages[f"ingest_{task}"])
        assert {str(paths.processed(task))} == _outs(stages[f"preprocess_{task}"])
        assert {str(paths.splits(task))} == _outs(stages[f"split_{task}"])
        train = {expand(p) for p in _outs(stages[f"train_{task}"])}
        assert str(paths.model_dir(task, "M", 7)) in train
        assert {
            str(paths.val_curve(paths.live_dir(task, "M", 7), "m").parents[1]),
            str(paths.live_summary(task, "M", 7)),
        } <= train
        evaluate = _outs(stages[f"evaluate_{task}"])  # one stage scores every run
        for inside in (paths.run_metrics(task, "M", 7), paths.eval_plots(task, "M", 7)):
            assert any(str(inside).startswith(p + "/") for p in evaluate), inside
    report = _outs(stages["report"])
    assert {str(paths.SUMMARY), str(paths.HEADLINE), str(paths.RESULTS)} <= report
    assert all(p.startswith(str(paths.ANALYSIS)) for p in _outs(stages["analyze_classification"]))


def test_lock_holds_only_the_stages_dvc_yaml_plans():
    """`dvc repro` updates the entries of the stages it runs and never drops others: a stage
    renamed or removed (an old method list, the per-run evaluate stages) stays in dvc.lock,
    which DVC parses and rewrites in full after every stage (~1 s per stage per 4,000 lines,
    and the no-op `dvc repro` parses it too). Regenerate with `rm dvc.lock && dvc repro`."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    planned = set(out.stdout.split())
    locked = set(yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"])
    assert locked - planned == set(), "dvc.lock holds stages dvc.yaml no longer plans"
    assert planned - locked == set(), "stages of dvc.yaml missing from dvc.lock"
