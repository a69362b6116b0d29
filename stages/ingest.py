"""Stage ingest_<task>: generate the synthetic default or index the user's data.

Writes data/<task>/ingested/ (manifest.json, plus the generated files for synthetic data).
"""

from semimed import cli, paths
from semimed.config import load_task_section
from semimed.data.sources import ingest


def run() -> None:
    args = cli.parser(__doc__).parse_args()
    cfg = load_task_section(args.task, args.params)
    manifest = ingest(cfg, paths.ingested(args.task))
    print(f"ingest {args.task}: {len(manifest['records'])} records from {cfg.data.source}")


if __name__ == "__main__":
    cli.main(run)
