"""``llem workloads``: list the built-in workload profiles, or show one with its provenance.

The main app registers :data:`workloads_app` with ``app.add_typer(workloads_app, ...)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llenergymeasure.config.workloads import WorkloadFileError, read_profile
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.lengths import (
    WorkloadProfile,
    builtin_profile,
    builtin_profiles,
    describe,
)

__all__ = ["workloads_app"]

workloads_app = typer.Typer(
    help="Named request-length profiles (dataset: {profile: NAME}).",
    no_args_is_help=True,
)

_CTX = {"help_option_names": ["-h", "--help"]}
_NO_CAP = 10**9


def _spec(profile: WorkloadProfile, key: str) -> str:
    spec = getattr(profile, key)
    return "—" if spec is None else describe(spec, _NO_CAP).replace(f"{_NO_CAP}]", "no max]")


@workloads_app.command("list", context_settings=_CTX)
def list_command() -> None:
    """The built-in profiles: name, input and output lengths.

    Example: llem workloads list
    """
    con = Console(highlight=False)
    table = Table(title="workload profiles (dataset: {profile: NAME})")
    for col in ("name", "input tokens", "output tokens"):
        table.add_column(col, overflow="fold")
    for name in builtin_profiles():
        p = builtin_profile(name)
        table.add_row(name, escape(_spec(p, "input_len")), escape(_spec(p, "output_len")))
    con.print(table)
    con.print("details and sources: llem workloads show NAME", soft_wrap=True)


@workloads_app.command("show", context_settings=_CTX)
def show_command(
    name: Annotated[str, typer.Argument(help="A built-in profile, or a profile file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """One profile: its source, date, assumptions, the statistics it reproduces.

    Example: llem workloads show lm-arena-chat
    """
    try:
        profile = read_profile(name, Path.cwd())
    except WorkloadFileError as exc:
        raise ConfigError(str(exc), hint="llem workloads list names the built-in ones") from exc
    if as_json:
        typer.echo(json.dumps(profile.model_dump(exclude_none=True), indent=2))
        return
    con = Console(highlight=False)
    lines = [
        f"[bold]{escape(profile.name)}[/bold]: {escape(profile.description)}",
        f"source ({escape(profile.date)}): {escape(profile.source)}",
        f"input tokens:  {escape(_spec(profile, 'input_len'))}",
        f"output tokens: {escape(_spec(profile, 'output_len'))}",
    ]
    for line in lines:
        con.print(line)
    if profile.reproduces:
        table = Table(title="published statistics it reproduces (tokens)")
        for col in ("", "mean", "p50", "p90", "p99", "max"):
            table.add_column(col, justify="right" if col else "left")
        for key, claim in profile.reproduces.items():
            table.add_row(
                key,
                *(
                    "—" if getattr(claim, k) is None else f"{getattr(claim, k):,.0f}"
                    for k in ("mean", "p50", "p90", "p99", "max")
                ),
            )
        con.print(table)
        for key, claim in profile.reproduces.items():
            if claim.note:
                con.print(f"{key}: {escape(claim.note)}")
    for text in profile.assumptions:
        con.print(f"- {escape(text)}")
    if profile.suggested:
        con.print(f"settings of the source: {escape(json.dumps(profile.suggested))}")
    con.print(f"use: dataset: {{profile: {escape(name)}}}")
