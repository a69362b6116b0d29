"""Stage evaluate_<task>@<method>-<seed>: score the best checkpoint on the TEST split, once.

Writes metrics/<task>/<method>/seed<k>.json, the per-case table seed<k>_cases.csv beside it
(segmentation: scored in each case's original space, files named by data/<task>/ingested)
and, under plots/eval/<task>/<method>/seed<k>/, a confusion-matrix plot (classification) or
a slice overlay PNG (segmentation).
"""

import json

from semimed import cli, paths
from semimed.build import load_for_data, load_task
from semimed.data.taskdata import load_task_data
from semimed.evaluate.run import evaluate_run, run_record, write_cases
from semimed.io import write_json_atomic
from semimed.runtime import select_device
from semimed.tasks import spec


def run() -> None:
    args = cli.parser(__doc__, run=True).parse_args()
    task, method, seed = args.task, args.method, args.seed
    cfg = load_task(task, args.params)
    data = load_task_data(cfg, paths.processed(task), paths.splits(task))
    model_dir = paths.model_dir(task, method, seed)
    device = select_device(cfg.train.device)
    model = load_for_data(cfg, data, method, model_dir, device)
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


if __name__ == "__main__":
    cli.main(run)
