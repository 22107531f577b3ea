"""What the user sees while a study runs.

On a terminal: a live panel (run i of n, experiment, phase, elapsed, ETA, last result's key
figures) and a countdown during thermal gaps. Elsewhere (CI logs, pipes): one line per event.
``quiet``: nothing until the summary. The panel refreshes from rich's own thread; the
study loop never polls for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from llenergymeasure.results.study import RunMetrics, RunSummary, StudyResult
from llenergymeasure.runners.base import RunOutcome
from llenergymeasure.study.manifest import RunRecord
from llenergymeasure.study.plan import PlannedExperiment
from llenergymeasure.textable import Column, Table, fit_table, wrap_text


def fmt_duration(seconds: float | None) -> str:
    """``1h02m03s`` / ``02m03s`` / ``3.2s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m:02d}m{sec:02d}s"


def key_figures(metrics: RunMetrics | None) -> str:
    """The last result in one line."""
    if metrics is None:
        return ""
    parts = []
    if metrics.output_tokens_per_s is not None:
        parts.append(f"{metrics.output_tokens_per_s:.1f} tok/s")
    if metrics.j_per_output_token is not None:
        parts.append(f"{metrics.j_per_output_token:.3g} J/tok")
    if metrics.avg_power_w is not None:
        parts.append(f"{metrics.avg_power_w:.0f} W")
    if metrics.gpu_energy_j is not None:
        parts.append(f"{metrics.gpu_energy_j:.1f} J")
    if metrics.quality_flags:
        parts.append("flags: " + ",".join(metrics.quality_flags))
    return " · ".join(parts) or "no figures"


def runner_label(runner: Any) -> str:
    """The runner's name, with why it was chosen when it says (``local (auto: ...)``)."""
    why = getattr(runner, "chosen_because", None)
    return f"{runner.name} ({why})" if why else str(runner.name)


def describe(exp: PlannedExperiment) -> str:
    """Backend, model and the parameters that distinguish this experiment."""
    params = " ".join(f"{k}={v}" for k, v in exp.params.items())
    return escape(f"{exp.config.backend} {exp.config.model}" + (f" [{params}]" if params else ""))


class StudyProgress:
    """Progress of one study session; a context manager around the run loop."""

    def __init__(
        self,
        console: Console,
        *,
        study_name: str,
        study_dir: Path,
        total: int,
        done: int,
        quiet: bool,
        estimates: dict[str, float | None],
        runner: str,
    ) -> None:
        self.console = console
        self.study_name = study_name
        self.study_dir = study_dir
        self.total = total
        self.done = done
        self.quiet = quiet
        self.estimates = estimates
        self.runner = runner
        self.live_mode = console.is_terminal and not quiet
        self._live: Live | None = None
        self._t0 = time.monotonic()
        self._run_t0: float | None = None
        self._phase = "starting"
        self._current = ""
        self._position = done
        self._last = ""
        self._failed = 0
        self._durations: list[float] = []
        self._remaining_hashes: list[str] = []
        self._gap_until: float | None = None
        self._gap_label = ""

    # -- context
    def __enter__(self) -> StudyProgress:
        if not self.quiet:
            self.console.print(
                f"[bold]study[/] {self.study_name} · {self.total} runs · runner "
                f"{self.runner} · {self.study_dir}"
            )
        if self.live_mode:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
            self._live = None

    # -- events
    def start_run(self, rec: RunRecord, exp: PlannedExperiment) -> None:
        """A run starts."""
        self._position += 1
        self._run_t0 = time.monotonic()
        self._phase = "running"
        self._current = f"{rec.run_id} · {describe(exp)}"
        if not self.live_mode and not self.quiet:
            self.console.print(
                f"[{self._position}/{self.total}] {rec.run_id} cycle {rec.cycle} · {describe(exp)}"
            )

    def end_run(
        self,
        rec: RunRecord,
        exp: PlannedExperiment,
        outcome: RunOutcome,
        metrics: RunMetrics | None,
        *,
        with_id: bool = False,
    ) -> None:
        """A run ended (``with_id``: name it in the line, when runs overlap)."""
        if outcome.duration_s is not None:
            self._durations.append(outcome.duration_s)
        self._run_t0 = None
        self._phase = "between runs"
        if outcome.ok:
            self._last = f"{rec.run_id}: {escape(key_figures(metrics))}"
            took = fmt_duration(outcome.duration_s)
            line = f"  [green]completed[/] in {took} · {escape(key_figures(metrics))}"
        else:
            self._failed += outcome.status == "failed"
            self._last = f"{rec.run_id}: {outcome.status} ({outcome.failure_kind})"
            color = "yellow" if outcome.status == "interrupted" else "red"
            line = (
                f"  [{color}]{outcome.status}[/] ({outcome.failure_kind}) after "
                f"{fmt_duration(outcome.duration_s)}: {escape(outcome.message or '')}"
            )
        if with_id:
            line = f"  {rec.run_id}:{line[1:]}"
        if not self.quiet:
            if self.live_mode and not with_id:
                self.console.print(f"[{self._position}/{self.total}] {rec.run_id}")
            self.console.print(line, highlight=False)

    def echo(self, line: str) -> None:
        """A log line from the running harness (``-v``)."""
        self.console.print(Text(line, style="dim"), highlight=False)

    def countdown(
        self, seconds: float, label: str, sleep: Callable[[float], None] = time.sleep
    ) -> float:
        """Wait out a thermal gap with a visible countdown; returns the seconds waited."""
        self._gap_until = time.monotonic() + seconds
        self._gap_label = label
        self._phase = "gap"
        if not self.live_mode and not self.quiet:
            self.console.print(f"  {label}: waiting {fmt_duration(seconds)} (--no-gaps skips)")
        remaining = seconds
        try:
            while remaining > 0:
                step = min(1.0, remaining)
                sleep(step)
                remaining -= step
        finally:
            self._gap_until = None
            self._phase = "between runs"
        return seconds - max(0.0, remaining)

    # -- rendering
    def _eta(self) -> float | None:
        left = self.total - self._position
        if self._durations:
            mean = sum(self._durations) / len(self._durations)
        else:
            known = [v for v in self.estimates.values() if v is not None]
            if not known:
                return None
            mean = sum(known) / len(known)
        current_left = 0.0
        if self._run_t0 is not None:
            current_left = max(0.0, mean - (time.monotonic() - self._run_t0))
        return left * mean + current_left

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        grid = RichTable.grid(padding=(0, 1))
        grid.add_column(style="bold")
        grid.add_column()
        grid.add_row(
            "run",
            f"{self._position} of {self.total}"
            + (f" · {self._failed} failed" if self._failed else ""),
        )
        grid.add_row("experiment", self._current or "-")
        if self._gap_until is not None:
            phase = f"{self._gap_label}: {fmt_duration(max(0.0, self._gap_until - now))} left"
        elif self._run_t0 is not None:
            phase = f"{self._phase} · {fmt_duration(now - self._run_t0)}"
        else:
            phase = self._phase
        grid.add_row("phase", phase)
        grid.add_row("elapsed", f"{fmt_duration(now - self._t0)} · ETA {fmt_duration(self._eta())}")
        if self._last:
            grid.add_row("last", self._last)
        return Group(grid)

    def summary(self, result: StudyResult) -> None:
        """The end-of-study summary (printed even with ``quiet``), within the console's width."""
        for line in summary_lines(result, list(self.estimates), self.console.width):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)


def summary_lines(
    result: StudyResult, plan_order: list[str], width: int, *, wide: bool = False
) -> list[str]:
    """The end-of-study table: one row per run, numbered by experiment as the dry run does.

    Args:
        result: The study result.
        plan_order: The config hashes in plan order (experiment ``i`` is ``plan_order[i-1]``).
        width: The width to fit (see :mod:`llenergymeasure.textable`).
        wide: Every column whatever the width.
    """
    number = {h: i for i, h in enumerate(plan_order, start=1)}
    runs = result.runs

    def figure(run: RunSummary, name: str, fmt: str) -> str:
        value = getattr(run.metrics, name) if run.metrics is not None else None
        if value is not None:
            return format(value, fmt)
        return "not measured" if run.state == "completed" else "—"

    columns = [
        Column("run", [r.run_id for r in runs], priority=3),
        Column("cycle", [str(r.cycle) for r in runs], right=True),
        Column("state", [r.state for r in runs]),
        Column("tok/s", [figure(r, "output_tokens_per_s", ".1f") for r in runs], True),
        Column("J/tok", [figure(r, "j_per_output_token", ".3g") for r in runs], True),
        Column("W", [figure(r, "avg_power_w", ".0f") for r in runs], True, priority=2),
        Column("time", [fmt_duration(r.duration_s) for r in runs], True, priority=1),
    ]
    if any(r.state != "completed" for r in runs):
        causes = [str(r.failure_kind or "") if r.state != "completed" else "" for r in runs]
        columns.append(Column("cause", causes))
    table = Table(
        numbers=[str(number.get(r.config_hash, "?")) for r in runs],
        params=[
            {"backend": r.backend, "model": r.model, "precision": r.precision, **r.params}
            for r in runs
        ],
        columns=columns,
        param_order=("backend", "model", "precision"),
        wide_hint="llem results show --wide: every figure",
        notes=[
            f"{result.n_completed}/{result.n_runs} completed · wall {fmt_duration(result.wall_s)}"
            f" (runs {fmt_duration(result.experiments_s)}, gaps {fmt_duration(result.gaps_s)})"
            f" · {result.study_dir}",
            *([measuring_line(result)] if result.measuring_fraction is not None else []),
            *([load_line(result)] if result.load_breakdown_s else []),
        ],
    )
    return [
        *wrap_text(f"{result.study_name}: {result.state}", width),
        *fit_table(table, width, wide=wide),
    ]


def measuring_line(result: StudyResult) -> str:
    """``measuring 37 % of the time in runs (load 40 %, ...)``: where the GPU time went."""
    parts = result.time_breakdown_s or {}
    busy = sum(v for k, v in parts.items() if k != "gaps")
    shown = ", ".join(
        f"{k.replace('_', ' ')} {v / busy:.0%}"
        for k, v in parts.items()
        if k not in ("measure", "gaps") and busy > 0 and v / busy >= 0.005
    )
    frac = result.measuring_fraction or 0.0
    return f"measuring {frac:.0%} of the time in runs" + (f" ({shown})" if shown else "")


#: Short names of the load parts (time_budget.LOAD_PARTS) for one line of text.
LOAD_PART_LABELS = {
    "python_import": "imports",
    "engine_start": "engine start",
    "weights": "weights",
    "dynamo_transform": "dynamo",
    "inductor_compile": "inductor",
    "compile_other": "compile other",
    "cuda_graph_capture": "cuda graphs",
    "kv_cache_profile": "kv cache/profile",
    "other": "other",
}


def load_line(result: StudyResult) -> str:
    """``load 61 s: imports 25, engine start 3, weights 2, dynamo 9, ...``: where the loads'
    time went (vLLM's logged phases, summed over runs)."""
    parts = result.load_breakdown_s or {}
    total = sum(parts.values())
    shown = ", ".join(
        f"{LOAD_PART_LABELS.get(k, k)} {v:.0f}" for k, v in parts.items() if round(v) > 0
    )
    return f"load {total:.0f} s: {shown}" if shown else f"load {total:.0f} s"
