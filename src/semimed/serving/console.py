"""The ``semimed`` console script: ``semimed predict`` and ``semimed export``.

    semimed predict MODEL_DIR INPUT [INPUT ...] --output DIR [--task TASK] [--batch-size N]
                    [--probabilities] [--device auto|cpu|cuda] [--path-column NAME]
    semimed export MODEL_DIR --out DIR [--format torchscript onnx]

MODEL_DIR is a trained run's folder (``models/<task>/<method>/seed<k>``, with model.json).
Bad input ends the command with one line on stderr and exit code 2; nothing is written.
See docs/predict.md for the output formats.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from semimed import process
from semimed.config import TASKS, ConfigError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="semimed",
        description="Apply a trained model folder to new files, or export it (TorchScript, ONNX).",
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="apply a model folder to images or NIfTI volumes")
    p.add_argument("model", help="model folder (models/<task>/<method>/seed<k>)")
    p.add_argument("inputs", nargs="+", help="files, folders or CSVs (with a path column)")
    p.add_argument("-o", "--output", required=True, help="output folder (written whole)")
    p.add_argument("--task", choices=TASKS, help="refuse a model of another task")
    p.add_argument(
        "--batch-size",
        type=int,
        help="images (classification) or sliding windows (segmentation) per forward; "
        "default: the model card's",
    )
    p.add_argument(
        "--probabilities",
        action="store_true",
        help="segmentation: also write per-class probability maps <id>_probs.nii.gz",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--path-column", default="path", help="path column of CSV inputs")

    e = sub.add_parser("export", help="write TorchScript and ONNX of a model folder")
    e.add_argument("model", help="model folder (models/<task>/<method>/seed<k>)")
    e.add_argument("--out", required=True, help="output folder (written whole)")
    e.add_argument(
        "--format",
        nargs="+",
        default=["torchscript", "onnx"],
        choices=("torchscript", "onnx"),
        help="formats to write (default: both)",
    )
    return top


def _predict(args: argparse.Namespace) -> None:
    from semimed.serving.predict import predict

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1; got {args.batch_size}")
    info = predict(
        args.model,
        args.inputs,
        args.output,
        task=args.task,
        batch_size=args.batch_size,
        probabilities=args.probabilities,
        device=args.device,
        path_column=args.path_column,
    )
    print(f"predict: {info['count']} {info['task']} input(s) -> {args.output}")


def _export(args: argparse.Namespace) -> None:
    from semimed.serving.export import export_model

    info = export_model(args.model, args.out, tuple(args.format))
    diffs = ", ".join(
        f"{k} max |diff| {v:.1e}" for k, v in info["max_abs_difference"].items() if v is not None
    )
    print(f"export: {', '.join(info['files'])} in {args.out}" + (f" ({diffs})" if diffs else ""))


def guarded(fn: Callable[[], None]) -> int:
    """Run `fn`; a bad model folder, input, output or param (ConfigError, of which
    ModelFolderError, PredictError and ExportError are kinds) or a missing file ends it with
    one line on stderr and returns `EXIT_BAD_INPUT` (0 on success). Anything else is a bug,
    and its traceback shows."""
    try:
        fn()
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``semimed`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    process.start()  # a command-line process, as the stages: MONAI's light import
    handler = _predict if args.command == "predict" else _export
    return guarded(lambda: handler(args))


if __name__ == "__main__":
    sys.exit(main())
