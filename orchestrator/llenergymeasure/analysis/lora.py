"""LoRA experiments beside the same study's run without adapters: :func:`lora_against_base`.

An experiment with ``lora:`` is matched to the experiment of the same study whose config is
identical except for ``lora:`` (and its free ``name``): its *base*. Each row gives both J per
output token and throughput (means over the completed cycles) and their ratio, plus the
adapter mix (requests per adapter, summed over cycles) and the engine's adapter counts
where it reports them (load/swap counts; the most adapters in flight at one engine step, the
largest over the cycles). Per-adapter energy inside a run is apportioned by output tokens
(``ExperimentResult.lora``, docs/methodology.md).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure.analysis.table import LoadedStudy
from llenergymeasure_contract.experiment import ExperimentConfig


@dataclass
class LoraRow:
    """One experiment with adapters, against its base (``None`` fields: not measured/found)."""

    study_id: str
    config_hash: str
    n_adapters: int
    selection: str
    max_loras: int
    j_per_output_token: float | None
    output_tokens_per_s: float | None
    base_config_hash: str | None = None
    base_j_per_output_token: float | None = None
    base_output_tokens_per_s: float | None = None
    requests_per_adapter: dict[str, int] = field(default_factory=dict)
    adapter_loads: int | None = None
    adapter_swaps: int | None = None
    max_adapters_running: int | None = None  # the most over the cycles
    max_adapters_waiting: int | None = None
    counts_provenance: dict[str, str] = field(default_factory=dict)

    @property
    def j_ratio(self) -> float | None:
        """J/output token with adapters over without (None when either is missing)."""
        if self.j_per_output_token is None or not self.base_j_per_output_token:
            return None
        return self.j_per_output_token / self.base_j_per_output_token

    @property
    def throughput_ratio(self) -> float | None:
        """Output tokens/s with adapters over without."""
        if self.output_tokens_per_s is None or not self.base_output_tokens_per_s:
            return None
        return self.output_tokens_per_s / self.base_output_tokens_per_s

    def to_json(self) -> dict[str, Any]:
        """Plain data (``--json``)."""
        return {
            "study_id": self.study_id,
            "config_hash": self.config_hash,
            "n_adapters": self.n_adapters,
            "selection": self.selection,
            "max_loras": self.max_loras,
            "j_per_output_token": self.j_per_output_token,
            "output_tokens_per_s": self.output_tokens_per_s,
            "base_config_hash": self.base_config_hash,
            "base_j_per_output_token": self.base_j_per_output_token,
            "base_output_tokens_per_s": self.base_output_tokens_per_s,
            "j_per_output_token_ratio": self.j_ratio,
            "output_tokens_per_s_ratio": self.throughput_ratio,
            "requests_per_adapter": self.requests_per_adapter,
            "adapter_loads": self.adapter_loads,
            "adapter_swaps": self.adapter_swaps,
            "max_adapters_running": self.max_adapters_running,
            "max_adapters_waiting": self.max_adapters_waiting,
            "counts_provenance": self.counts_provenance,
        }


def _without_lora(config: ExperimentConfig) -> str:
    """The hash the config would have without ``lora:`` (its base's identity)."""
    data = config.model_dump(mode="json", exclude={"lora"})
    return ExperimentConfig.model_validate(data).config_hash


def lora_against_base(study: LoadedStudy) -> list[LoraRow]:
    """Every experiment of ``study`` with adapters, matched to its base (see module doc)."""
    means = {
        r.config_hash: (
            r.interval("j_per_output_token").mean,
            r.interval("output_tokens_per_s").mean,
        )
        for r in study.rows
    }
    identity: dict[str, str] = {}  # config hash -> hash without lora
    rows: dict[str, LoraRow] = {}
    for run in study.result.runs:
        res = study.run_result(run)
        if res is None:
            continue
        identity.setdefault(run.config_hash, _without_lora(res.config))
        outcome = res.lora
        if outcome is None:
            continue
        j, tps = means.get(run.config_hash, (None, None))
        row = rows.setdefault(
            run.config_hash,
            LoraRow(
                study_id=study.result.study_id,
                config_hash=run.config_hash,
                n_adapters=outcome.n_adapters,
                selection=outcome.selection,
                max_loras=outcome.max_loras,
                j_per_output_token=j,
                output_tokens_per_s=tps,
            ),
        )
        for share in outcome.per_adapter:
            row.requests_per_adapter[share.adapter] = (
                row.requests_per_adapter.get(share.adapter, 0) + share.requests
            )
        row.adapter_loads = outcome.adapter_loads
        row.adapter_swaps = outcome.adapter_swaps
        row.max_adapters_running = _most(row.max_adapters_running, outcome.max_adapters_running)
        row.max_adapters_waiting = _most(row.max_adapters_waiting, outcome.max_adapters_waiting)
        row.counts_provenance = dict(outcome.counts_provenance)
    bases = {ident: h for h, ident in identity.items() if h not in rows}
    for row in rows.values():
        base = bases.get(identity[row.config_hash])
        if base is not None:
            row.base_config_hash = base
            row.base_j_per_output_token, row.base_output_tokens_per_s = means.get(
                base, (None, None)
            )
    return list(rows.values())


def _most(a: int | None, b: int | None) -> int | None:
    """The larger of two counts, None only when neither is known."""
    known = [v for v in (a, b) if v is not None]
    return max(known) if known else None


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def lora_report_section(study: LoadedStudy) -> str:
    """The report's LoRA section (empty when the study has no adapters)."""
    rows = lora_against_base(study)
    if not rows:
        return ""
    head = (
        "<tr><th>config</th><th>adapters</th><th>selection</th><th>J/output token</th>"
        "<th>without adapters</th><th>× base</th><th>output tok/s</th><th>without</th>"
        "<th>× base</th><th>requests per adapter</th><th>most adapters in flight</th></tr>"
    )
    body = "".join(
        "<tr>"
        f"<td><code>{html.escape(r.config_hash[:10])}</code></td><td>{r.n_adapters}</td>"
        f"<td>{html.escape(r.selection)}</td><td>{_fmt(r.j_per_output_token)}</td>"
        f"<td>{_fmt(r.base_j_per_output_token)}</td><td>{_fmt(r.j_ratio)}</td>"
        f"<td>{_fmt(r.output_tokens_per_s)}</td><td>{_fmt(r.base_output_tokens_per_s)}</td>"
        f"<td>{_fmt(r.throughput_ratio)}</td>"
        f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in r.requests_per_adapter.items()))}"
        f"</td><td>{'—' if r.max_adapters_running is None else r.max_adapters_running}</td></tr>"
        for r in rows
    )
    return (
        "<h2>LoRA adapters against the base model</h2>"
        f"<table>{head}{body}</table>"
        "<p>Base: the experiment of this study with the same config and no <code>lora:</code> "
        "(— when there is none). A run's energy is split between its adapters by their share "
        "of its output tokens (docs/methodology.md). Most adapters in flight: the most "
        "adapters vLLM's <code>vllm:lora_requests_info</code> listed at one engine step of the "
        "measured window (— where the engine does not report it; result.json's "
        "<code>lora.counts_provenance</code> says why).</p>"
    )


__all__ = ["LoraRow", "lora_against_base", "lora_report_section"]
