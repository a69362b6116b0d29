"""Stage report: mean +- std over seeds per method -> metrics/summary.json (with convergence
counts and warnings) and metrics/headline.json (one compact value per method and task);
per-case paired comparisons against supervised -> metrics/paired.json; results.md, figures
and DVC plot records (<task>_methods.json, <task>_val_curves.json) under plots/report/.

Reads exactly the runs that params.yaml lists (`<task>.methods` x `<task>.seeds`), so stale
files of methods dropped from an experiment never leak into its summary. Warnings (runs still
improving at their last evaluation, an upper bound that does not beat the baseline) lead
results.md and close the stage's output.
"""

from semimed import cli, paths
from semimed.config import TASKS, load_task_section
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.report.flags import warnings_block
from semimed.report.task import task_report


def run() -> None:
    args = cli.parser(__doc__, task=False).parse_args()
    reports = [task_report(load_task_section(task, args.params)) for task in TASKS]
    warnings = [f"{r.task}: {flag}" for r in reports for flag in r.flags]
    write_json_atomic(paths.SUMMARY, {r.task: r.summary for r in reports})
    write_json_atomic(paths.HEADLINE, {r.task: r.headline for r in reports})
    write_json_atomic(paths.PAIRED, {r.task: r.paired for r in reports})
    text = "\n".join(
        [
            warnings_block(warnings) + "\n".join(r.section for r in reports),
            "## Paired comparison against supervised (per test case)\n",
            *(r.paired_section for r in reports),
        ]
    )
    write_bytes_atomic(paths.RESULTS, text.encode())
    print(text + "".join(f"\nWARNING {w}" for w in warnings))


if __name__ == "__main__":
    cli.main(run)
