"""Stage split_<task>: grouped train/val/test and labeled/unlabeled -> data/<task>/splits.json."""

import json

from semimed import cli, paths
from semimed.config import load_task_section
from semimed.data.splits import make_splits
from semimed.io import write_json_atomic
from semimed.tasks import spec


def run() -> None:
    args = cli.parser(__doc__).parse_args()
    cfg = load_task_section(args.task, args.params)
    manifest = json.loads((paths.processed(args.task) / "manifest.json").read_text())
    targets = cfg.data.targets if spec(args.task).has_targets else None
    split = make_splits(manifest, cfg.split, targets)
    if not split["train_unlabeled"]:  # only then is it worth loading the method registry
        from semimed.build import check_unlabeled_pool

        check_unlabeled_pool(cfg, split)
    write_json_atomic(paths.splits(args.task), split)
    print(f"split {args.task}: {split['counts']}")


if __name__ == "__main__":
    cli.main(run)
