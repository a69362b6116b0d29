"""Stage predict_<task>@<input>: a trained model folder applied to one of `<task>.predict.inputs`.

Reads the `<task>.predict` block of params.yaml (model, inputs, output, batch_size,
probabilities); dvc.yaml plans one stage per input (a `matrix` over `inputs`, so an empty
list plans none). Writes `<output>/<input>/`: `predictions.csv` (classification) or one
label map per volume in the input's own grid (segmentation), and `predictions.json`.
"""

from semimed import cli
from semimed.serving.predict import load_predict_params, predict, stage_output


def run() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--input", required=True, help="one entry of <task>.predict.inputs")
    args = p.parse_args()
    params = load_predict_params(args.task, args.params)
    out = stage_output(params.output, args.input)
    info = predict(
        params.model,
        [args.input],
        out,
        task=args.task,
        batch_size=params.batch_size,
        probabilities=params.probabilities,
        path_column=params.path_column,
    )
    print(f"predict {args.task}: {info['count']} input(s) of {args.input} -> {out}")


if __name__ == "__main__":
    cli.main(run)
