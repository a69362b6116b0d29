"""Import MONAI without its eager load of every subpackage: the processes semimed starts.

``monai/__init__.py`` ends with ``load_submodules``: it imports every MONAI subpackage and
then every module (executing each one a second time), so any ``from monai.x import y``
pulls torchvision (with ``torch._dynamo`` and sympy), matplotlib, scikit-learn, scipy.signal
and requests into the process: ~2.5 s of a 2-core machine on top of torch's ~1.4 s, paid by
every stage that trains, evaluates or preprocesses (issue 17).

`install()` registers a meta-path finder, for this process only, that changes two things and
nothing else of MONAI:

1. ``load_submodules(monai, ...)`` imports only `SUBPACKAGES` (what semimed uses), in MONAI's
   own alphabetical order, which its circular imports rely on (``monai.apps`` before
   ``monai.data`` and ``monai.transforms``). Any other MONAI subpackage still imports on
   demand, as usual.
2. While ``monai/__init__.py`` runs, the optional extras in `DEFERRED` look absent: MONAI's
   ``optional_import`` then keeps its usual deferred error and raises it only if a feature
   needing the extra is called. The features affected are ones semimed does not call:
   torchvision (``monai.networks.blocks``' FCN/FPN backbones, ``TorchVisionFCModel``,
   ``MILModel``, ``NetAdapter``'s feature extractor, ``PerceptualLoss``), matplotlib
   (``monai.utils.jupyter_utils``, ``monai.visualize.matshow3d``), scikit-learn
   (``monai.metrics.embedding_collapse``), scipy.signal and scipy.sparse.linalg
   (``UltrasoundConfidenceMap``, the notch filter transform, ``PanopticQualityMetric``,
   DiNTS), requests (MONAI's download helpers: semimed downloads nothing). Afterwards they
   import normally (semimed's torchvision ResNet-18, the report's matplotlib).

If the light load fails (another MONAI version), MONAI's own eager load runs instead, with
one warning. ``SEMIMED_MONAI_EAGER=1`` keeps MONAI's eager load. Library users who only
``import semimed`` are not affected: `install` is called by ``semimed.cli`` (the stage
scripts) and ``semimed.console`` (``semimed predict`` / ``export``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

#: MONAI subpackages loaded with ``import monai``, in MONAI's load order.
SUBPACKAGES = ("apps", "config", "data", "inferers", "losses", "metrics", "networks", "transforms")
#: Optional extras that look absent while `SUBPACKAGES` load (see the module docstring).
DEFERRED = (
    "torchvision",
    "matplotlib",
    "sklearn",
    "requests",
    "scipy.signal",
    "scipy.sparse.linalg",
)
_HOOKED = "monai.utils.module"


def _deferred(name: str) -> bool:
    return any(name == d or name.startswith(d + ".") for d in DEFERRED)


class _LightMonai(importlib.abc.MetaPathFinder):
    """Wraps the loaders of ``monai`` (the window) and ``monai.utils.module`` (the patch)."""

    def __init__(self) -> None:
        self.loading = False  # True while ``monai/__init__.py`` runs: DEFERRED look absent

    def find_spec(self, name, path, target=None):
        if self.loading and _deferred(name):
            raise ModuleNotFoundError(f"No module named {name!r} (deferred)", name=name)
        if name not in ("monai", _HOOKED):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Wrapped(spec.loader, self, name)
        return spec

    def light_load(self, original, basemod, load_all, exclude_pattern):
        """Stands in for ``load_submodules``: light for the ``monai`` package itself."""
        if basemod.__name__ != "monai":
            return original(basemod, load_all, exclude_pattern)
        if load_all:  # MONAI's second call, the one that imports every module
            return [], []
        try:
            return [importlib.import_module(f"monai.{p}") for p in SUBPACKAGES], []
        except Exception as err:  # noqa: BLE001 - any failure: MONAI's own load instead
            self.loading = False
            warnings.warn(
                f"semimed: light MONAI import failed ({err}); loading all of MONAI", stacklevel=2
            )
            original(basemod, False, exclude_pattern)
            return original(basemod, True, exclude_pattern)


class _Wrapped(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader, finder: _LightMonai, name: str) -> None:
        self.real, self.finder, self.name = real, finder, name

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module) -> None:
        if self.name == "monai":
            self.finder.loading = True
            try:
                self.real.exec_module(module)
            finally:  # MONAI is loaded (its module hook ran inside): nothing left to do
                self.finder.loading = False
                if self.finder in sys.meta_path:
                    sys.meta_path.remove(self.finder)
            return
        self.real.exec_module(module)
        original, finder = module.load_submodules, self.finder

        def load_submodules(basemod, load_all=True, exclude_pattern="(.*[tT]est.*)|(_.*)"):
            return finder.light_load(original, basemod, load_all, exclude_pattern)

        module.load_submodules = load_submodules


def install() -> None:
    """Make this process's first MONAI import light (no-op when MONAI is already imported,
    when installed before, or with ``SEMIMED_MONAI_EAGER=1``)."""
    if os.environ.get("SEMIMED_MONAI_EAGER") == "1" or "monai" in sys.modules:
        return
    if not any(isinstance(f, _LightMonai) for f in sys.meta_path):
        sys.meta_path.insert(0, _LightMonai())
