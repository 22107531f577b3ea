"""``llem run``: expand a study (or one experiment from flags), show or execute the plan."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import yaml

from llenergymeasure.config.loader import (
    COMMAND_LINE,
    expand_study,
    load_study,
    read_with_bases,
)
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.config.user import load_user_defaults, user_config_path
from llenergymeasure.errors import InterruptedStudy, UsageError
from llenergymeasure.runners.factory import dry_run_job_scripts
from llenergymeasure.study.api import resume as resume_study
from llenergymeasure.study.api import run_study
from llenergymeasure.study.load_times import cached_startups
from llenergymeasure.study.options import StudyRunOptions
from llenergymeasure.study.plan import StudyPlan, build_plan
from llenergymeasure.study.signals import Terminated
from llenergymeasure_contract.experiment import DEFAULT_BACKEND
from llenergymeasure_contract.registry import REGISTRY

#: --batch-size sets each backend's concurrency key (its registry entry's).
_BATCH_HELP = " / ".join(spec.concurrency_path for spec in REGISTRY)


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--set {item!r}: expected KEY=VALUE", hint="e.g. --set decoder.temperature=0.7"
            )
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
    return out


def _parse_gpus(raw: str) -> list[int]:
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"--gpus {raw!r}: expected comma-separated indices like 0,1") from exc


def collect_overrides(
    *,
    config: Path | None,
    model: str | None,
    backend: str | None,
    precision: str | None,
    load_format: str | None,
    n_prompts: int | None,
    max_input_tokens: int | None,
    max_output_tokens: int | None,
    batch_size: int | None,
    gpus: str | None,
    set_items: list[str],
) -> dict[str, Any]:
    """Experiment overrides from the command line, as dotted keys."""
    overrides: dict[str, Any] = {}
    for key, value in (
        ("model", model),
        ("backend", backend),
        ("precision", precision),
        ("load_format", load_format),
        ("n_prompts", n_prompts),
        ("max_input_tokens", max_input_tokens),
        ("max_output_tokens", max_output_tokens),
    ):
        if value is not None:
            overrides[key] = value
    if gpus is not None:
        overrides["gpus"] = _parse_gpus(gpus)
    if batch_size is not None:
        effective = backend
        if effective is None and config is not None:
            raw = read_with_bases(config)  # the backend may come from a base: file
            if "backend" in (raw.get("sweep") or {}):
                raise UsageError(
                    "--batch-size is ambiguous when the study sweeps backend",
                    hint="use --set " + " or ".join(f"{s.concurrency_path}=N" for s in REGISTRY),
                )
            effective = str(raw.get("backend", DEFAULT_BACKEND))
        # an unknown backend keeps the default's key; the loader reports the bad name itself
        name = effective if effective is not None and effective in REGISTRY else DEFAULT_BACKEND
        overrides[REGISTRY.get(name).concurrency_path] = batch_size
    overrides.update(_parse_set(set_items))
    return overrides


def load_plan(
    config: Path | None,
    *,
    overrides: dict[str, Any],
    execution_overrides: dict[str, Any],
    runner_overrides: dict[str, Any],
    results_dir: str | None,
) -> StudyPlan:
    """Load the study (file or flags) with the user's defaults and plan it."""
    user = load_user_defaults(user_config_path())
    study: StudyConfig
    if config is not None:
        study = load_study(
            config,
            user=user,
            overrides=overrides,
            execution_overrides=execution_overrides,
            runner_overrides=runner_overrides,
            results_dir=results_dir,
        )
    else:
        if "model" not in overrides:
            raise UsageError(
                "nothing to run: give a study file or --model",
                hint="e.g. llem run examples/cpu-quickstart.yaml, or "
                "llem run --model tiny-llama --load-format dummy --backend pytorch",
            )
        study = expand_study(
            {"name": "cli"},
            source=COMMAND_LINE,
            base_dir=Path.cwd(),
            user=user,
            overrides=overrides,
            execution_overrides=execution_overrides,
            runner_overrides=runner_overrides,
            results_dir=results_dir,
        )
    return build_plan(study, startups=cached_startups())


def run_command(
    config: Path | None = typer.Argument(
        None, help="study.yaml / experiment YAML or JSON. Omit to describe one experiment by flags."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Hub id, local path or built-in architecture."
    ),
    backend: str | None = typer.Option(None, "--backend", help=" | ".join(REGISTRY.names())),
    precision: str | None = typer.Option(None, "--precision", help="float32 | float16 | bfloat16"),
    load_format: str | None = typer.Option(None, "--load-format", help="auto | dummy"),
    n_prompts: int | None = typer.Option(None, "--n-prompts", help="Number of prompts."),
    max_input_tokens: int | None = typer.Option(
        None,
        "--max-input-tokens",
        help="Prompt length in tokens (synthetic); longer dataset prompts are cut to it.",
    ),
    max_output_tokens: int | None = typer.Option(
        None,
        "--max-output-tokens",
        help="Tokens each request generates (exactly, with ignore_eos, the default).",
    ),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        help=_BATCH_HELP,
    ),
    gpus: str | None = typer.Option(None, "--gpus", help="GPU indices, e.g. 0,1"),
    set_items: list[str] = typer.Option(
        [], "--set", help="Any experiment key: --set decoder.temperature=0.7 (repeatable)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; run nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --dry-run: the plan as JSON."),
    cycles: int | None = typer.Option(None, "--cycles", min=1, help="Override execution.n_cycles."),
    order: str | None = typer.Option(None, "--order", help="sequential | interleaved | shuffled"),
    no_gaps: bool = typer.Option(False, "--no-gaps", help="Skip thermal gaps."),
    results_dir: str | None = typer.Option(None, "--results-dir", help="Where study folders go."),
    runner: str | None = typer.Option(
        None, "--runner", help="docker | local | auto | slurm (see docs/scale-out.md)"
    ),
    resume: Path | None = typer.Option(
        None, "--resume", help="Resume a study directory: skip completed runs."
    ),
    export_csv: bool = typer.Option(
        True, "--export-csv/--no-export-csv", help="Write summary.csv."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Answer yes (e.g. to pulling images)."),
    timeout_s: float | None = typer.Option(None, "--timeout", help="Per-experiment timeout (s)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the summary."),
    verbose: bool = typer.Option(
        False, "-v", "--verbose", help="Stream container logs; tracebacks."
    ),
) -> int:
    """Run a study, or one experiment described by flags.

    Example: llem run examples/cpu-quickstart.yaml --dry-run
    """
    if as_json and not dry_run:
        raise UsageError("--json goes with --dry-run")
    if quiet and verbose:
        raise UsageError("-q and -v contradict each other; pick one")
    execution_overrides = _execution_overrides(cycles, order, no_gaps, timeout_s)
    runner_overrides: dict[str, Any] = {"runner": runner} if runner else {}
    opts = StudyRunOptions(quiet=quiet, verbose=verbose, export_csv=export_csv, assume_yes=yes)
    if resume is not None:
        _refuse_on_resume(
            {"--model": model, "--backend": backend, "--precision": precision}
            | {"--load-format": load_format, "--n-prompts": n_prompts}
            | {"--max-input-tokens": max_input_tokens, "--max-output-tokens": max_output_tokens}
            | {"--batch-size": batch_size, "--gpus": gpus, "--set": set_items or None}
            | {"--results-dir": results_dir}
        )
        return _resume(resume, config, opts, (execution_overrides, runner_overrides), dry_run)
    overrides = collect_overrides(
        config=config,
        model=model,
        backend=backend,
        precision=precision,
        load_format=load_format,
        n_prompts=n_prompts,
        max_input_tokens=max_input_tokens,
        max_output_tokens=max_output_tokens,
        batch_size=batch_size,
        gpus=gpus,
        set_items=set_items,
    )
    plan = load_plan(
        config,
        overrides=overrides,
        execution_overrides=execution_overrides,
        runner_overrides=runner_overrides,
        # relative to where the user typed the command, made absolute once, here
        results_dir=str(Path(results_dir).expanduser().absolute()) if results_dir else None,
    )
    if dry_run:
        _print_dry_run(plan, as_json=as_json)
        return 0
    with _sigterm_is_143():
        return int(run_study(plan, opts))  # 0 when every run completed, else 1


def _resume(
    resume: Path,
    config: Path | None,
    opts: StudyRunOptions,
    overrides: tuple[dict[str, Any], dict[str, Any]],
    dry_run: bool,
) -> int:
    """``llem run --resume DIR``: resume the study there (``overrides``: execution, runner)."""
    execution_overrides, runner_overrides = overrides
    with _sigterm_is_143():
        resumed = resume_study(
            resume.absolute(),
            opts,
            config=config.absolute() if config is not None else None,
            execution_overrides=execution_overrides,
            runner_overrides=runner_overrides,
            dry_run=dry_run,
        )
    return int(resumed)


def _execution_overrides(
    cycles: int | None, order: str | None, no_gaps: bool, timeout_s: float | None
) -> dict[str, Any]:
    """The ``execution:`` keys the flags ``--cycles``, ``--order``, ``--no-gaps`` and
    ``--timeout`` set."""
    out: dict[str, Any] = {}
    if cycles is not None:
        out["n_cycles"] = cycles
    if order is not None:
        out["cycle_order"] = order
    if no_gaps:
        out.update(config_gap_s=0.0, cycle_gap_s=0.0)
    if timeout_s is not None:
        out["experiment_timeout_s"] = timeout_s
    return out


def _refuse_on_resume(flags: dict[str, Any]) -> None:
    """Refuse flags that would change what a started study measures or where it writes.

    Raises:
        UsageError: naming the flags given (``None``: not given).
    """
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise UsageError(
            f"{', '.join(given)} cannot change a started study: what it measures and "
            "where its results go are fixed in its plan.json",
            hint="resume without them, or start a new study with them",
        )


def _print_dry_run(plan: StudyPlan, *, as_json: bool) -> None:
    """The plan (a table, or JSON), with the job scripts of a batch-scheduler runner."""
    scripts = dry_run_job_scripts(plan)  # None: the runner submits no job scripts
    if as_json:
        doc = plan.to_json_dict()
        if scripts is not None:
            doc["job_scripts"] = [{"run_id": r, "script": text} for r, text in scripts]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from llenergymeasure.cli.render import plan_table

    sys.stdout.write(plan_table(plan) + "\n")
    for run_id, text in scripts or []:
        sys.stdout.write(f"\n# ---- job script of run {run_id}\n{text}")


@contextlib.contextmanager
def _sigterm_is_143() -> Iterator[None]:
    """SIGTERM before the first run (preflight, images) exits 143, as it does mid-study.

    typer turns every ``KeyboardInterrupt`` into exit 130, and ``Terminated`` is one.
    """
    try:
        yield
    except Terminated:
        raise InterruptedStudy("stopped by SIGTERM before any run started", exit_code=143) from None
