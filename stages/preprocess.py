"""Stage preprocess_<task>: MONAI chains -> arrays + manifest in data/<task>/processed/."""

from semimed import cli, paths
from semimed.config import load_task_section
from semimed.data.preprocess import preprocess


def run() -> None:
    args = cli.parser(__doc__).parse_args()
    cfg = load_task_section(args.task, args.params)
    out = preprocess(cfg, paths.ingested(args.task), paths.processed(args.task))
    print(f"preprocess {args.task}: {len(out['records'])} items")


if __name__ == "__main__":
    cli.main(run)
