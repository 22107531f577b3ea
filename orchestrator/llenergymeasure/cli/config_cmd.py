"""``llem config``: what this host has, the user defaults in effect, and the study schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from llenergymeasure.config.schema import study_json_schema
from llenergymeasure.config.user import ENV_USER_CONFIG, load_user_defaults, user_config_path

config_app = typer.Typer(
    help="Show this host's capabilities and the user defaults in effect.\n\n"
    "Example: llem config   |   llem config schema -o study.schema.json",
    invoke_without_command=True,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@config_app.callback(invoke_without_command=True)
def config_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print as one JSON document."),
) -> None:
    """Docker and its NVIDIA runtime, GPUs, installed backends, images, user defaults.

    Example: llem config --json
    """
    if ctx.invoked_subcommand is not None:
        return
    path = user_config_path()
    defaults = load_user_defaults(path)
    report: dict[str, Any] = {
        "user_config": {
            "path": str(path) if path else None,
            "exists": bool(path and path.is_file()),
            "env_var": ENV_USER_CONFIG,
            "values": defaults.model_dump(mode="json", exclude_none=True),
        }
    }
    from llenergymeasure.hostinfo import collect_host_info

    report["host"] = collect_host_info().model_dump(mode="json")
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.pretty import Pretty

    console = Console(highlight=False)
    console.print("[bold]host[/bold]")
    console.print(Pretty(report["host"], expand_all=True))
    uc = report["user_config"]
    console.print(
        f"[bold]user defaults[/bold] {uc['path'] or '(disabled)'}"
        f"{'' if uc['exists'] else ' (not present; built-in defaults apply)'}"
    )
    if uc["values"]:
        console.print(Pretty(uc["values"], expand_all=True))


@config_app.command("schema")
def schema_command(
    output: Path | None = typer.Option(None, "--output", "-o", help="Write to this file."),
) -> None:
    """Write the JSON Schema of study.yaml, for editor completion and checks.

    Example: llem config schema -o study.schema.json
    """
    text = json.dumps(study_json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {output}")
