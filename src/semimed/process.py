"""Per-process settings of the processes semimed starts (stage scripts, the `semimed` command).

`start()` makes both, before anything imports MONAI:

* **MONAI's light import** (`install_light_monai`). ``monai/__init__.py`` ends with
  ``load_submodules``, which imports every MONAI subpackage and module and with them
  torchvision, matplotlib, scikit-learn, scipy.signal and requests. A meta-path finder, for
  this process only, makes ``load_submodules(monai, ...)`` import only `SUBPACKAGES` (in
  MONAI's own alphabetical order, which its circular imports rely on), and while
  ``monai/__init__.py`` runs makes the extras in `DEFERRED` look absent, so MONAI's
  ``optional_import`` keeps its deferred error for features semimed does not call
  (torchvision backbones, ``matshow3d``, the embedding-collapse metric, the ultrasound
  confidence map and notch filter, MONAI's downloads). Any other MONAI subpackage still
  imports on demand, and the extras import normally afterwards. If the light load fails
  (another MONAI version), MONAI's eager load runs instead, with one warning;
  ``SEMIMED_MONAI_EAGER=1`` keeps the eager load. ``import semimed`` alone changes nothing.
* **Freed memory stays in the process** (`keep_freed_memory`). glibc serves allocations above
  a dynamic threshold with their own ``mmap`` and returns freed memory at the heap's top to
  the system, so a training step's freed tensors come back as fresh zero-filled pages. The
  mmap threshold is fixed at `MMAP_BYTES` and the trim threshold raised to `KEEP_BYTES`, so
  a step's freed blocks are reused by the next one, as PyTorch's CUDA caching allocator does
  on a GPU. Values do not change (the CPU allocator aligns tensors to 64 bytes either way);
  the loop hands the kept memory back before each validation (`release_free_memory`). No
  effect where the C library is not glibc.

The costs these settings save are measured in docs/benchmark.md.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings

#: MONAI subpackages loaded with ``import monai``, in MONAI's load order.
SUBPACKAGES = ("apps", "config", "data", "inferers", "losses", "metrics", "networks", "transforms")
#: Optional extras that look absent while `SUBPACKAGES` load.
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


def install_light_monai() -> None:
    """Make this process's first MONAI import light (no-op when MONAI is already imported,
    when installed before, or with ``SEMIMED_MONAI_EAGER=1``)."""
    if os.environ.get("SEMIMED_MONAI_EAGER") == "1" or "monai" in sys.modules:
        return
    if not any(isinstance(f, _LightMonai) for f in sys.meta_path):
        sys.meta_path.insert(0, _LightMonai())


# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: glibc's own ceiling for its dynamic threshold,
# above every tensor of a training step of the default and preset workloads; larger blocks
# (whole volumes in preprocess, evaluate, predict) still get their own mmap and go back to
# the system when freed, so keeping memory costs nothing there.
MMAP_BYTES = 32 << 20
# The heap keeps up to this much free memory at its top: more than a step frees at once.
KEEP_BYTES = 1 << 30


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library if it is glibc, else None."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
    except (ValueError, OSError):  # no such name here: not glibc
        return None
    return ctypes.CDLL(None)


def keep_freed_memory(mmap_bytes: int = MMAP_BYTES, keep_bytes: int = KEEP_BYTES) -> bool:
    """Set glibc's mmap threshold to ``mmap_bytes`` and its trim threshold to ``keep_bytes``;
    True if glibc took both, False on another C library."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    took_mmap = mallopt(_M_MMAP_THRESHOLD, mmap_bytes)
    took_trim = mallopt(_M_TRIM_THRESHOLD, keep_bytes)
    return bool(took_mmap and took_trim)


def release_free_memory() -> None:
    """Give the free memory the heap keeps back to the system (glibc ``malloc_trim(0)``): the
    training loop calls it before each validation, whose allocations differ from a training
    step's, so that its peak does not add to the blocks the steps keep."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def start() -> None:
    """Both settings of a semimed process: MONAI's light import, freed memory kept."""
    install_light_monai()
    keep_freed_memory()
