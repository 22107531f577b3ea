"""``llem results``: read, compare, report and export finished studies.

Each command parses its options, calls one function of :mod:`llenergymeasure.analysis` and
renders the outcome; errors are :class:`~llenergymeasure.errors.LLEMError` (exit 2 for a bad
directory or option), mapped in :func:`llenergymeasure.cli.main`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

results_app = typer.Typer(
    rich_markup_mode=None,  # plain click help: whole option names at 80 columns, no <bool>
    help="Read, compare, report and export finished studies.\n\n"
    "Example: llem results show results/cpu-quickstart_a03665b5_20261201T222324Z",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_CTX = {"help_option_names": ["-h", "--help"]}


@results_app.command("show", context_settings=_CTX)
def show_command(
    study_dir: Path = typer.Argument(..., help="A study directory (with study_result.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print the rows as CSV."),
    wide: bool = typer.Option(
        False, "--wide", help="Every column and the full intervals, whatever the width."
    ),
) -> None:
    """One row per experiment, cycles aggregated: the parameters that vary, J/output token,
    output tok/s and TTFT p50 (mean ±95 % CI), cycles, then the flags. Fits the terminal
    (80 columns when piped); --wide adds TTFT p99, mean W, CV and the full intervals.

    Example: llem results show results/my-study_1a2b3c4d_20260101T000000Z --csv > rows.csv
    """
    from llenergymeasure.analysis.table import dumps, load_study_dir, rows_csv, rows_json
    from llenergymeasure.errors import UsageError

    if as_json and as_csv:
        raise UsageError("--json and --csv: choose one")
    study = load_study_dir(study_dir)
    if as_json:
        sys.stdout.write(dumps(rows_json(study.rows)) + "\n")
        return
    if as_csv:
        sys.stdout.write(rows_csv(study.rows))
        return
    from llenergymeasure.cli.results_render import render_show

    render_show(study, wide=wide)


@results_app.command("compare", context_settings=_CTX)
def compare_command(
    study_dirs: list[Path] = typer.Argument(..., help="One or more study directories."),
    by: str | None = typer.Option(
        None,
        "--by",
        help="Comma-separated grouping keys: backend, model, precision, study or swept keys "
        "(batch_size or pytorch.batch_size). Default: the keys that vary.",
    ),
    baseline: str | None = typer.Option(
        None, "--baseline", help="Baseline row: its number (1 = first) or key=value[,key=value]."
    ),
    metric: list[str] | None = typer.Option(
        None,
        "--metric",
        help="Metric to compare (repeatable); default j_per_output_token, "
        "output_tokens_per_s, ttft_p99_s.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    wide: bool = typer.Option(
        False, "--wide", help="Every column, whatever the width (80 columns when piped)."
    ),
) -> None:
    """Experiments side by side, grouped by swept keys, with the ratio to a baseline row and
    whether the 95 % intervals overlap; environment differences between studies are listed.

    Example: llem results compare results/h100_* results/h200_* --by backend,batch_size
    """
    from llenergymeasure.analysis.compare import compare
    from llenergymeasure.analysis.table import dumps

    keys = [k.strip() for k in by.split(",") if k.strip()] if by else None
    result = compare(list(study_dirs), by=keys, baseline=baseline, metrics=metric or None)
    from llenergymeasure.analysis.lora import lora_against_base
    from llenergymeasure.analysis.table import load_study_dir

    lora = [row for d in study_dirs for row in lora_against_base(load_study_dir(d))]
    if as_json:
        doc = result.to_json()
        if lora:
            doc["lora"] = [row.to_json() for row in lora]
        sys.stdout.write(dumps(doc) + "\n")
        return
    from llenergymeasure.cli.results_render import render_compare, render_lora

    render_compare(result, wide=wide)
    render_lora(lora, wide=wide)


@results_app.command("report", context_settings=_CTX)
def report_command(
    study_dir: Path = typer.Argument(..., help="A study directory."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file."),
) -> None:
    """One self-contained HTML file (no server, no network): summary table, Pareto plots,
    parameter-vs-energy charts, each run's power/clock/temperature series, flags, method and
    environment.

    Example: llem results report results/my-study_1a2b3c4d_20260101T000000Z -o report.html
    """
    from llenergymeasure.analysis.report import write_report

    path = write_report(study_dir, output)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@results_app.command("export", context_settings=_CTX)
def export_command(
    study_dir: Path = typer.Argument(..., help="A study directory."),
    fmt: str = typer.Option("hf", "--format", "-f", help="hf | parquet | csv | json."),
    output: Path = typer.Option(..., "--output", "-o", help="A new (or empty) folder."),
) -> None:
    """Export for sharing: hf writes a Hugging Face dataset folder (Parquet + README.md card)
    that datasets.load_dataset reads offline; parquet, csv and json write runs.* and
    experiments.*.

    Example: llem results export results/my-study_1a2b3c4d_20260101T000000Z --format hf -o ds
    """
    from llenergymeasure.analysis.export import export_study_dir

    for path in export_study_dir(study_dir, output, fmt):
        typer.echo(f"wrote {path}")
