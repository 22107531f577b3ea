"""The study report: one self-contained HTML file (:func:`write_report`).

No server and no network: the data and plotly.js (the full library, inlined once in the
page head) travel inside the file, so it opens from a mail attachment or an air-gapped host.
The page is the sections of :data:`SECTIONS`, in order; each is a function
``(page, study) -> None`` that adds its heading, text and plots, so a new section is one
function appended to the list (sections in :mod:`~llenergymeasure.analysis.report_sections`,
the page and the charts in :mod:`~llenergymeasure.analysis.report_plots`)::

    header               the study: model, precision, backends, lengths, n_prompts, traffic
                         and SLO thresholds, cycles (a table), and the run facts
    summary table        one row per experiment (numbered as the dry run): mean [95 % CI]
    Pareto plots         J/output token against output tok/s, and against TTFT p99
                         (error bars: the 95 % intervals; the line joins the efficient set)
    latency-throughput   output tok/s against TTFT p99 (drawn even when energy is unmeasured)
    concurrency          J/output token and output tok/s against each backend's concurrency
                         (its registry key: batch size, max_num_seqs ...), a line per backend
    other swept keys     each other swept key against J/output token and output tok/s, only
                         over the experiments that have it (n_prompts, a size, is not one)
    time series          each run's power, SM clock and temperature from timeseries.parquet,
                         its phases shaded (baseline, warmup, measured window, steady state,
                         prefill pass)
    quality flags        every run's flags with their messages
    method, environment  the measurement and statistics used; where it was measured

Every point is labelled with its experiment number (``#3``, as in the summary table and the
dry run) and the values that vary, on the plot and in its hover text. A plot with nothing to
draw (energy not measured on a CPU host, no time series) is replaced by a sentence saying why,
never by an empty frame. Plots carry the class ``llem-plot`` and a ``data-points`` attribute
(the number of points drawn) so tests can check them.
"""

from __future__ import annotations

import json
from pathlib import Path

from llenergymeasure.analysis.outfile import check_output_file, output_write_error
from llenergymeasure.analysis.report_plots import Page, esc, load_plotly
from llenergymeasure.analysis.report_sections import SECTIONS
from llenergymeasure.analysis.table import LoadedStudy, load_study_dir
from llenergymeasure_contract.results import atomic_path

__all__ = ["SECTIONS", "render_report", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.note{color:#555;font-style:italic}h2{margin-top:2.5rem}
#study th{text-align:right}.phases{color:#555;font-size:.85rem;margin-top:0}
.llem-plot{max-width:1100px}
"""


def render_report(study: LoadedStudy) -> str:
    """The report's HTML text (see the module docstring)."""
    go = load_plotly()
    del go
    from plotly.offline import get_plotlyjs

    res = study.result
    page = Page()
    for section in SECTIONS:
        section(page, study)
    data = json.dumps(
        {"study_id": res.study_id, "n_plots": page.n_plots}, separators=(",", ":")
    ).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(res.study_name)}: llem report</title><style>{_CSS}</style>"
        f"<script>{get_plotlyjs()}</script>"
        f'<script type="application/json" id="llem-report">{data}</script>'
        "</head><body>" + "\n".join(page.parts) + "</body></html>\n"
    )


def write_report(study_dir: str | Path, output: str | Path) -> Path:
    """Write the report of the study in ``study_dir`` to ``output`` (atomically).

    Raises:
        UsageError: not a study directory, or ``output`` cannot be written.
        PreflightError: plotly (the ``report`` extra) is not installed.
    """
    out = check_output_file(Path(output).expanduser())
    load_plotly()
    study = load_study_dir(study_dir)
    text = render_report(study)
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise output_write_error(out, exc) from exc
    return out
