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
    rich_markup_mode=None,  # plain click help: whole option names at 80 columns, no <bool>
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
    sys.stdout.write("\n".join(config_lines(report)) + "\n")


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def config_lines(report: dict[str, Any]) -> list[str]:
    """``llem config`` as text: one ``label  value`` line per fact, grouped; sizes for humans."""
    from llenergymeasure.cli.render import fmt_bytes

    host = report["host"]
    docker = host["docker"]
    out = [
        "host",
        f"  name              {host['hostname']}",
        f"  platform          {host['platform']}",
        f"  python            {host['python']}",
        f"  llem              {host['llem_version']}",
        f"  runner to use     {host['recommended_runner']}",
        "docker",
    ]
    if docker["reachable"]:
        out += [
            f"  engine            {docker['server_version'] or '?'} at {docker['host']}",
            f"  NVIDIA runtime    {_yes(docker['nvidia_runtime'])}"
            f" (hook on PATH: {_yes(docker['nvidia_hook_on_path'])};"
            f" CDI specs: {', '.join(docker['cdi_specs']) or 'none'})",
        ]
    else:
        out.append(f"  not reachable at {docker['host']}: {docker['error'] or 'unknown error'}")
    out.append("GPUs")
    if host["gpus"]:
        for g in host["gpus"]:
            mem = g["memory_total_mib"]
            size = "" if mem is None else f", {fmt_bytes(mem * 1024**2)}"
            busy = f", busy: pids {g['busy_pids']}" if g["busy_pids"] else ""
            out.append(f"  {g['index']}  {g['name']}{size}{busy}")
    else:
        why = host["gpu_error"] or ("nvidia-smi found none" if host["nvidia_smi"] else "")
        out.append(f"  none{f' ({why})' if why else ' (no nvidia-smi)'}")
    out.append("backends installed on this host (local runner)")
    out.append(f"  harness           {_yes(host['harness_installed'])}")
    for name, ok in host["backends_installed"].items():
        out.append(f"  {name:<17} {_yes(ok)}")
    out.append("images in Docker")
    for img in host["images"]:
        size = "" if img["size_bytes"] is None else f", {fmt_bytes(img['size_bytes'])}"
        state = f"present{size}" if img["present"] else "not present"
        out.append(f"  {img['backend']:<17} {img['name']}: {state}")
    uc = report["user_config"]
    where = uc["path"] or f"(disabled: {uc['env_var']} is empty)"
    out.append(f"user defaults  {where}")
    if not uc["exists"]:
        out.append("  not present; built-in defaults apply")
    for key, value in _flat(uc["values"]):
        out.append(f"  {key} = {json.dumps(value)}")
    return out


def _flat(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as dotted ``key, value`` pairs (empty mappings left out)."""
    out: list[tuple[str, Any]] = []
    for k, v in values.items():
        if isinstance(v, dict):
            out.extend(_flat(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


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
