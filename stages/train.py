"""Stage train_<task>@<method>-<seed>: one training run through THE loop (semimed.training.train).

Writes models/<task>/<method>/seed<k>/ (best.pt, train.json, and model.json, which makes the
folder usable without params.yaml: `semimed predict`, `semimed export`) and the DVCLive folder.
The resumable checkpoint goes to .scratch/<task>/<method>/seed<k>/last.pt (not a DVC output),
so a crashed run resumes and DVC's run cache can restore finished runs.
With `train.devices` > 1 the script starts itself again under torchrun, one process each.
"""

import os

from semimed import cli, paths
from semimed.build import load_task
from semimed.data.taskdata import load_task_data
from semimed.serving.model_folder import write_model_card
from semimed.training import distributed
from semimed.training.train import train_run


def run() -> None:
    args = cli.parser(__doc__, run=True).parse_args()
    cfg = load_task(args.task, args.params)
    if cfg.train.devices > 1 and not distributed.is_worker():
        distributed.relaunch(cfg)  # does not return: this process becomes torchrun
    processed, splits = paths.processed(args.task), paths.splits(args.task)
    data = load_task_data(cfg, processed, splits)
    summary = train_run(
        cfg,
        data,
        args.method,
        args.seed,
        model_dir=paths.model_dir(args.task, args.method, args.seed),
        live_dir=paths.live_dir(args.task, args.method, args.seed),
        data_files=[processed / "manifest.json", splits],
        scratch_dir=paths.scratch_dir(args.task, args.method, args.seed),
    )
    if os.environ.get("RANK", "0") == "0":  # one card and one line, not one per process
        write_model_card(paths.model_dir(args.task, args.method, args.seed), cfg, data, args.method)
        print(f"train {args.task}/{args.method}/seed{args.seed}: {summary}")


if __name__ == "__main__":
    cli.main(run)
