"""Stage analyze_classification: Grad-CAM, robustness and embeddings of the trained classifiers.

Loads the best checkpoint of every `classification.methods` x `classification.seeds` run from
its model folder (`semimed.serving.model_folder.load_model`) and writes, from the TEST split,
under plots/analysis/classification/:

* gradcam.png         the same test images for each method (first seed), Grad-CAM overlaid
* robustness.json     [{method, seed, kind, strength, balanced_accuracy}], one per run (a DVC plot)
* robustness.png      balanced accuracy vs perturbation strength, mean +- std over seeds
* embeddings_tsne.png / embeddings_umap.png   backbone features in 2D (first seed)
"""

import time

from semimed import cli, paths
from semimed.analysis import load_analysis
from semimed.analysis.embeddings import PROJECTIONS, backbone_features, plot_embeddings, project
from semimed.analysis.gradcam import gradcam_maps, plot_gradcam_grid, select_images
from semimed.analysis.robustness import plot_robustness, robustness_records
from semimed.build import check_task
from semimed.data.taskdata import load_task_data
from semimed.io import write_json_atomic
from semimed.runtime import select_device
from semimed.serving.model_folder import load_model

OUT = paths.ANALYSIS


def run() -> None:
    args = cli.parser(__doc__, task=False).parse_args()
    cfg, params = load_analysis(args.params)
    check_task(cfg)
    task = "classification"
    data = load_task_data(cfg, paths.processed(task), paths.splits(task))
    device = select_device(cfg.train.device)
    models = {
        method: {
            seed: load_model(paths.model_dir(task, method, seed), device).network
            for seed in cfg.seeds
        }
        for method in cfg.methods
    }
    first = {method: nets[cfg.seeds[0]] for method, nets in models.items()}
    x, y = data.arrays(data.split["test"])
    began = time.perf_counter()

    shown = select_images(y, params.gradcam_images)
    k = data.num_classes  # the primary target's logit columns come first
    rows = {m: gradcam_maps(net, x[shown], k) for m, net in first.items()}
    plot_gradcam_grid(x[shown], y[shown].tolist(), rows, data.class_names, OUT / "gradcam.png")

    records = robustness_records(
        models,
        x,
        y,
        params.kinds,
        params.strengths,
        params.perturb_seed,
        cfg.eval.batch_size,
        device,
        k,
    )
    write_json_atomic(paths.ROBUSTNESS, records)
    plot_robustness(records, OUT / "robustness.png")

    features = {
        m: backbone_features(net, x, cfg.eval.batch_size, device) for m, net in first.items()
    }
    for how in PROJECTIONS:
        points = {
            m: project(f, how, params.projection_seed, params.umap_neighbors)
            for m, f in features.items()
        }
        name = PROJECTIONS[how]
        title = f"test-split backbone features, {name} (seed {cfg.seeds[0]} of each method)"
        plot_embeddings(points, y.tolist(), data.class_names, title, OUT / f"embeddings_{how}.png")

    clean: dict[str, list[float]] = {}  # every seed's clean score, once (strength 0 = any kind)
    for r in records:
        if r["strength"] == 0 and r["kind"] == params.kinds[0]:
            clean.setdefault(r["method"], []).append(r["balanced_accuracy"])
    print(
        f"analyze classification: {len(cfg.methods)} methods x {len(cfg.seeds)} seeds, "
        f"{len(y)} test images, {time.perf_counter() - began:.1f}s; clean balanced accuracy "
        + ", ".join(f"{m}={sum(v) / len(v):.3f}" for m, v in clean.items())
    )


if __name__ == "__main__":
    cli.main(run)
