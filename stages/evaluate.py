"""Stage evaluate_<task>: score every run's best checkpoint on the TEST split, once.

Each run's model is loaded from its model folder (best.pt through model.json,
`semimed.serving.model_folder.load_model`), as `semimed predict` loads it.

The runs are `<task>.methods` x `<task>.seeds`, all in one process (the start-up of torch and
MONAI is paid once; docs/benchmark.md). For each run it writes
metrics/<task>/<method>/seed<k>.json, the per-case table seed<k>_cases.csv beside it
(segmentation: scored in each case's original space, files named by data/<task>/ingested)
and, under plots/eval/<task>/<method>/seed<k>/, a confusion-matrix plot (classification) or
a slice overlay PNG (segmentation). `--method M --seed K` scores one run only.
"""

import json

from semimed import cli, paths
from semimed.build import load_task
from semimed.config import ConfigError
from semimed.data.taskdata import load_task_data
from semimed.evaluate.run import evaluate_run, run_record, write_cases
from semimed.io import write_json_atomic
from semimed.runtime import select_device
from semimed.serving.model_folder import load_model
from semimed.tasks import spec


def evaluate_one(cfg, data, device, method: str, seed: int) -> None:
    """Score run (`method`, `seed`) of `cfg.task` and write its three files."""
    task = cfg.task
    model_dir = paths.model_dir(task, method, seed)
    model = load_model(model_dir, device).network
    plots = paths.eval_plots(task, method, seed)
    metrics, cases = evaluate_run(
        cfg, data, model, device, plots, f"{method} seed {seed}", paths.ingested(task)
    )
    train_info = json.loads((model_dir / "train.json").read_text())
    metrics = run_record(task, method, seed, len(data.split["test"]), metrics, train_info)
    write_json_atomic(paths.run_metrics(task, method, seed), metrics)
    write_cases(paths.run_cases(task, method, seed), cases)
    headline = spec(task).headline
    print(f"evaluate {task}/{method}/seed{seed}: {headline}={metrics[headline]}")


def run() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--method", help="score this method's run only (with --seed)")
    p.add_argument("--seed", type=int, help="score this seed's run only (with --method)")
    args = p.parse_args()
    if (args.method is None) != (args.seed is None):
        raise ConfigError("evaluate: give --method and --seed together, or neither")
    cfg = load_task(args.task, args.params)
    data = load_task_data(cfg, paths.processed(args.task), paths.splits(args.task))
    device = select_device(cfg.train.device)
    runs = [(m, s) for m in cfg.methods for s in cfg.seeds]
    for method, seed in [(args.method, args.seed)] if args.method else runs:
        evaluate_one(cfg, data, device, method, seed)


if __name__ == "__main__":
    cli.main(run)
