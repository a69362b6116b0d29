"""Stage split_<task>: grouped train/val/test and labeled/unlabeled -> data/<task>/splits.json."""

import json

from semimed import cli
from semimed.config import load_task
from semimed.data.splits import check_unlabeled_pool, make_splits
from semimed.io import write_json_atomic


def run() -> None:
    args = cli.parser(__doc__).parse_args()
    cfg = load_task(args.task, args.params)
    manifest = json.loads((cli.data_dir(args.task, "processed") / "manifest.json").read_text())
    targets = cfg.data.targets if args.task == "classification" else None
    split = make_splits(manifest, cfg.split, targets)
    check_unlabeled_pool(cfg, split)
    write_json_atomic(cli.data_dir(args.task, "splits.json"), split)
    print(f"split {args.task}: {split['counts']}")


if __name__ == "__main__":
    cli.main(run)
