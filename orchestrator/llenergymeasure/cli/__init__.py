"""The ``llem`` command line. :func:`main` maps every :class:`LLEMError` to its exit code.

Commands live one per module (``run``, ``config_cmd``, ``images``, ``results``); each parses
its options, calls one library function and renders the outcome. Exit codes: 0 success, 1 an
experiment or runtime failure, 2 bad config or usage, 130 interrupted (Ctrl-C), 143 stopped by
SIGTERM. Tracebacks only with ``-v`` (``llem run``) or ``LLEM_DEBUG=1`` (any command).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import typer
from rich.console import Console

try:  # recent typer (0.29) vendors click as typer._click and no longer depends on click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer raises the click package's exceptions
    from click import ClickException  # type: ignore[assignment]

from llenergymeasure import __version__
from llenergymeasure.cli.config_cmd import config_app
from llenergymeasure.cli.run import run_command
from llenergymeasure.errors import LLEMError
from llenergymeasure.study.signals import Terminated

app = typer.Typer(
    name="llem",
    help="Measure how LLM deployment choices change energy, throughput and latency.\n\n"
    "Example: llem run examples/cpu-quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Measure how LLM deployment choices change energy, throughput and latency."""


app.command(
    "run",
    help=run_command.__doc__,
    context_settings={"help_option_names": ["-h", "--help"]},
)(run_command)
app.add_typer(config_app, name="config")
from llenergymeasure.cli.images import images_app  # noqa: E402 (after app is defined)

app.add_typer(images_app, name="images")
from llenergymeasure.cli.results import results_app  # noqa: E402

app.add_typer(results_app, name="results")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args or _debug_env()
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        result = app(args=args, prog_name="llem", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err.print("[yellow]aborted[/yellow]")
        return 130
    except ClickException as exc:
        if not exc.format_message():  # bare `llem`: the help was printed, nothing else to say
            return 2
        err.print(f"[red]error:[/red] {_escape(exc.format_message())}", markup=True)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            err.print(f"  see: {ctx.command_path} --help")
        return 2
    except KeyboardInterrupt as exc:
        err.print("[yellow]interrupted[/yellow]")
        return 143 if isinstance(exc, Terminated) else 130
    except LLEMError as exc:
        err.print(f"[red]error:[/red] {_escape(str(exc))}", markup=True)
        if verbose:
            err.print_exception()
        return exc.exit_code
    except Exception as exc:  # an internal bug: say so, traceback on -v
        err.print(f"[red]internal error:[/red] {type(exc).__name__}: {_escape(str(exc))}")
        if verbose:
            err.print_exception()
        else:
            err.print(f"  {_traceback_hint(args)}, and please report it")
        return 1
    return int(result) if isinstance(result, int) else 0


#: Set to 1 to print the traceback of any error, from any command.
ENV_DEBUG = "LLEM_DEBUG"
#: Commands that take -v/--verbose themselves.
_VERBOSE_COMMANDS = ("run",)


def _debug_env() -> bool:
    return os.environ.get(ENV_DEBUG, "") not in ("", "0", "false", "no")


def _traceback_hint(args: list[str]) -> str:
    """How to get the traceback: -v where the command has it, else the environment."""
    command = next((a for a in args if not a.startswith("-")), "")
    if command in _VERBOSE_COMMANDS:
        return "run again with -v for the traceback"
    return f"run again with {ENV_DEBUG}=1 for the traceback"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def entrypoint() -> None:
    """Console-script entry: exit with :func:`main`'s code."""
    sys.exit(main())


__all__ = ["app", "entrypoint", "main"]
