"""The Hugging Face dataset card (``README.md``) of an exported study.

A YAML header the Hub reads (``configs`` pointing at the two Parquet files, ``dataset_info``
with each column's feature type), then the study, how it was measured, the environment and
the column glossary in Markdown.
"""

from __future__ import annotations

from typing import Any

import yaml

from llenergymeasure.analysis import bootstrap
from llenergymeasure.analysis.table import LoadedStudy, fmt_interval, params_label


def _feature(t: Any) -> dict[str, Any]:
    import pyarrow as pa

    if pa.types.is_list(t):
        return {"list": _feature(t.value_type).get("dtype", "string")}
    if pa.types.is_boolean(t):
        return {"dtype": "bool"}
    if pa.types.is_integer(t):
        return {"dtype": "int64"}
    if pa.types.is_floating(t):
        return {"dtype": "float64"}
    return {"dtype": "string"}


def _features(schema: Any) -> list[dict[str, Any]]:
    return [{"name": f.name, **_feature(f.type)} for f in schema]


def _card_header(n_runs: int, name: str, runs_schema: Any, experiments_schema: Any) -> str:
    """The card's YAML front matter (the Hub reads its configs and features)."""
    header = {
        "pretty_name": f"llenergymeasure study {name}",
        "tags": ["llenergymeasure", "energy", "llm", "inference", "benchmark"],
        "size_categories": ["n<1K" if n_runs < 1000 else "1K<n<10K"],
        "configs": [
            {
                "config_name": "runs",
                "data_files": [{"split": "train", "path": "data/runs.parquet"}],
                "default": True,
            },
            {
                "config_name": "experiments",
                "data_files": [{"split": "train", "path": "data/experiments.parquet"}],
            },
        ],
        "dataset_info": [
            {"config_name": "runs", "features": _features(runs_schema)},
            {"config_name": "experiments", "features": _features(experiments_schema)},
        ],
    }
    return yaml.safe_dump(header, sort_keys=False, width=100).rstrip()


def _impact_lines(imp: Any) -> list[str]:
    """The carbon and cost inputs and their sources (or that there were none)."""
    if imp is None:
        return ["No carbon or cost inputs were given: the `impact.*` columns are null.", ""]
    lines = ["Carbon and cost inputs (and where each came from):", ""]
    for key, value in (
        ("carbon.grid_gco2_per_kwh", imp.carbon.grid_gco2_per_kwh),
        ("carbon.pue", imp.carbon.pue),
        ("cost.price_per_kwh", imp.cost.price_per_kwh),
        ("cost.currency", imp.cost.currency),
    ):
        if value is not None:
            lines.append(f"- `{key}` = {value} ({imp.sources.get(key, '?')})")
    lines.append("")
    return lines


def dataset_card(study: LoadedStudy, runs_schema: Any, experiments_schema: Any) -> str:
    """The card's text (see the module docstring)."""
    res = study.result
    env = study.environment()
    lines = [
        "---",
        _card_header(len(res.runs), res.study_name, runs_schema, experiments_schema),
        "---",
        "",
        f"# {res.study_name}: LLM inference energy, throughput and latency",
        "",
        f"Measured with llenergymeasure {res.llem_version} (`llem`), study `{res.study_id}`, "
        f"{res.n_completed} of {res.n_runs} runs completed ({res.state}), runner "
        f"`{res.runner}`, {res.started_at} to {res.finished_at}.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        'runs = load_dataset("parquet", data_files="data/runs.parquet")["train"]',
        'experiments = load_dataset("parquet", data_files="data/experiments.parquet")["train"]',
        "```",
        "",
        "`runs` has one row per planned run (an experiment in one cycle; runs that did not "
        "complete are kept with their `state` and cause). `experiments` has one row per "
        "experiment with the mean and 95 % interval of each metric over its cycles.",
        "",
        "## Experiments",
        "",
        "| experiment | backend | parameters | cycles | J/output token | output tok/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in study.rows:
        lines.append(
            f"| {r.config_hash[:10]} | {r.backend} | {params_label(r.params)} | "
            f"{r.stats.n_cycles_completed}/{r.n_runs} | "
            f"{fmt_interval(r.interval('j_per_output_token'))} | "
            f"{fmt_interval(r.interval('output_tokens_per_s'))} |"
        )
    lines += [
        "",
        "## Method",
        "",
        "Energy is the NVML total-energy counter of every GPU an experiment uses, read at the "
        "edges of the measured window (gross), with an idle-adjusted figure beside it "
        "(`net_*`: minus the idle baseline power times the window). Without a GPU every energy "
        "figure is null (not measured), never 0. Each experiment runs in a fresh container "
        "(or subprocess) after warmup on the measured shapes. Full definitions: "
        "docs/methodology.md of llenergymeasure.",
        "",
        f"Intervals: percentile bootstrap of the mean over cycles, {bootstrap.N_RESAMPLES:,} "
        f"resamples, seed {bootstrap.SEED}, 95 %; fewer than {bootstrap.MIN_CYCLES} cycles: "
        f'"not enough cycles" (null bounds). `high_cycle_cv`: the cycle-to-cycle coefficient '
        f"of variation of J/output token is above {bootstrap.CV_THRESHOLD:.0%}.",
        "",
    ]
    lines += _impact_lines(res.impact_inputs)
    lines += ["## Environment", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += [
        "",
        "## Columns",
        "",
        "`runs` columns are the field paths of each run's `result.json` joined with dots; "
        "units are in the names (`_j` joules, `_s` seconds, `_w` watts, `_per_s` per second, "
        "`_bytes`, `_mhz`, `_c` °C). The main ones:",
        "",
        "- `energy.gpu_energy_j`: gross GPU energy of the measured window (sum over GPUs)",
        "- `energy.net_gpu_energy_j`: the same minus idle power x window",
        "- `efficiency.j_per_output_token`, `efficiency.net_j_per_output_token`",
        "- `throughput.output_tokens_per_s`, `throughput.requests_per_s`",
        "- `latency.ttft_s.p50` / `.p99`: submit to first output token",
        "- `latency.tpot_s.p50`, `latency.itl_s.p50`, `latency.e2e_s.p50`",
        "- `energy.avg_power_w`, `energy.peak_power_w`",
        "- `quality_flags`: the codes of the run's quality flags (list)",
        "- `impact.gco2e_per_1k_output_tokens`, `impact.cost_per_1k_output_tokens` (and "
        "`_per_request`, `net_` variants): kWh x PUE x grid intensity or price",
        "",
        "`experiments` columns: `<metric>_mean`, `<metric>_ci_low`, `<metric>_ci_high`, "
        "`<metric>_n` (cycles that measured it), `j_per_output_token_cv`, `flags`.",
        "",
    ]
    return "\n".join(lines)
