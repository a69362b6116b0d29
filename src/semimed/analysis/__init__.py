"""What the trained classifiers learned: Grad-CAM maps, robustness to corruptions, embeddings.

Three analyses of the classification task, all on the TEST split, one module each:

* `semimed.analysis.gradcam`: Grad-CAM (Selvaraju et al., ICCV 2017) of the predicted class
  on the same few test images for every method;
* `semimed.analysis.robustness`: balanced accuracy under `semimed.transforms.perturb` of
  growing strength (in the spirit of ImageNet-C, Hendrycks & Dietterich, ICLR 2019);
* `semimed.analysis.embeddings`: backbone features projected to 2D with t-SNE and UMAP.

This module reads the analyze stage's params (`load_analysis`). Figures are bare Agg
``Figure`` objects written by `semimed.io.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

from semimed.config import ClsAnalysis, ConfigError, TaskConfig, load_task_section


def load_analysis(path: str | Path = "params.yaml") -> tuple[TaskConfig, ClsAnalysis]:
    """The classification TaskConfig and its ``analysis`` sub-section from params.yaml."""
    cfg = load_task_section("classification", path)
    if cfg.analysis is None:
        raise ConfigError(f"{path}: classification.analysis: missing key")
    return cfg, cfg.analysis
