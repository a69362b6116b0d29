"""Stage train_<task>@<method>-<seed>: one training run through THE loop (semimed.train).

Writes models/<task>/<method>/seed<k>/ (best.pt, last.pt, train.json) and the DVCLive
folder plots/train/<task>/<method>/seed<k>/. Both persist, so a crashed run resumes.
With `train.devices` > 1 the script starts itself again under torchrun, one process each.
"""

import os

from semimed import cli
from semimed.config import load_task
from semimed.data.loaders import load_task_data
from semimed.train import is_distributed_worker, relaunch_distributed, train_run


def run() -> None:
    args = cli.parser(__doc__, run=True).parse_args()
    cfg = load_task(args.task, args.params)
    if cfg.train.devices > 1 and not is_distributed_worker():
        relaunch_distributed(cfg)  # does not return: this process becomes torchrun
    processed = cli.data_dir(args.task, "processed")
    splits = cli.data_dir(args.task, "splits.json")
    data = load_task_data(cfg, processed, splits)
    summary = train_run(
        cfg,
        data,
        args.method,
        args.seed,
        model_dir=cli.run_dir("models", args.task, args.method, args.seed),
        live_dir=cli.run_dir("plots/train", args.task, args.method, args.seed),
        data_files=[processed / "manifest.json", splits],
    )
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"train {args.task}/{args.method}/seed{args.seed}: {summary}")


if __name__ == "__main__":
    cli.main(run)
