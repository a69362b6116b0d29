"""Stage evaluate_<task>@<method>-<seed>: score the best checkpoint on the TEST split, once.

Writes metrics/<task>/<method>/seed<k>.json and, under plots/eval/<task>/<method>/seed<k>/,
a confusion-matrix plot (classification) or a slice overlay PNG (segmentation).
"""

import json

from semimed import cli
from semimed.config import load_task
from semimed.data.loaders import load_task_data
from semimed.evaluate import SegmentationScorer, classification_metrics, confusion_records
from semimed.inference import predict_proba, predict_volume
from semimed.io import write_json_atomic
from semimed.report import plot_overlay
from semimed.train import load_best, select_device


def run() -> None:
    args = cli.parser(__doc__, run=True).parse_args()
    cfg = load_task(args.task, args.params)
    data = load_task_data(
        cfg, cli.data_dir(args.task, "processed"), cli.data_dir(args.task, "splits.json")
    )
    model_dir = cli.run_dir("models", args.task, args.method, args.seed)
    plots = cli.run_dir("plots/eval", args.task, args.method, args.seed)
    device = select_device(cfg.train.device)
    model = load_best(
        cfg,
        args.method,
        data.num_classes,
        model_dir,
        device,
        data.task_sizes,
        spatial_dims=data.spatial_dims,
        in_channels=data.in_channels,
    )
    test_ids = data.split["test"]

    if args.task == "classification":
        x, y = data.arrays(test_ids, all_tasks=True)
        probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
        per_task, start = {}, 0
        for t, (target, names) in enumerate(zip(data.targets, data.task_classes, strict=True)):
            p, start = probs[:, start : start + len(names)], start + len(names)
            per_task[target] = classification_metrics(y[:, t].numpy(), p, names)
            records = confusion_records(y[:, t].numpy(), p.argmax(1), names)
            suffix = "" if t == 0 else f"_{target}"  # the primary task keeps the plain name
            write_json_atomic(plots / f"confusion{suffix}.json", records)
        # primary task's metrics at the top level; every further task under "tasks"
        metrics = per_task.pop(data.targets[0])
        if per_task:
            metrics["tasks"] = per_task
    else:
        scorer = SegmentationScorer(data.class_names)
        for k, vid in enumerate(test_ids):
            image, label = data.volumes[vid]
            pred = predict_volume(
                model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
            )
            scorer.add(pred, label[0], data.spacing)
            if k == 0:  # one test volume's slice, ground truth vs prediction
                plot_overlay(
                    image[0],
                    label[0],
                    pred,
                    data.class_names,
                    plots / "overlay.png",
                    title=f"{args.method} seed {args.seed}: {vid}",
                )
        metrics = scorer.aggregate()

    train_info = json.loads((model_dir / "train.json").read_text())
    metrics = {
        "task": args.task,
        "method": args.method,
        "seed": args.seed,
        "n_test": len(test_ids),
        **metrics,
        # provenance: the run's fingerprint hashes its params, data, split and code
        # (wall time is left out so that equal runs give byte-identical files)
        "train": {
            k: v for k, v in train_info.items() if k not in ("task", "method", "seed", "seconds")
        },
    }
    write_json_atomic(
        cli.run_dir("metrics", args.task, args.method, args.seed).with_suffix(".json"), metrics
    )
    headline = "balanced_accuracy" if args.task == "classification" else "dice"
    print(f"evaluate {args.task}/{args.method}/seed{args.seed}: {headline}={metrics[headline]}")


if __name__ == "__main__":
    cli.main(run)
