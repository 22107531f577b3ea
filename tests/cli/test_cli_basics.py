"""``llem`` basics: version, help with examples, usage errors and the exit-code mapping."""

from __future__ import annotations

import subprocess
import sys

import pytest

import llenergymeasure.cli.run as run_module
from llenergymeasure.cli import main
from llenergymeasure.errors import (
    ConfigError,
    ExperimentError,
    InterruptedStudy,
    LLEMError,
    MeasurementError,
    PreflightError,
    RunnerError,
    UsageError,
)

FLAGS_ONLY = ["run", "--model", "tiny-llama", "--load-format", "dummy", "--dry-run"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_prints_2_0_0(capsys: pytest.CaptureFixture[str]) -> None:
    """``llem --version`` prints exactly the distribution version and exits 0."""
    code, out, _ = run(capsys, "--version")
    assert (code, out.strip()) == (0, "2.0.0")


def test_installed_console_script_prints_the_version() -> None:
    """The ``llem`` console script on PATH (python -m route) agrees with the package."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from llenergymeasure.cli import entrypoint; entrypoint()",
            "--version",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "2.0.0")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["run", "--help"], ["config", "--help"], ["config", "schema", "--help"]],
    ids=["llem", "llem-h", "run", "config", "config-schema"],
)
def test_help_shows_an_example(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    """Every command's help exits 0 and includes an ``Example:`` line."""
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "Example" in out
    assert "llem" in out


def test_no_arguments_shows_help_and_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """Bare ``llem`` prints the help listing run and config, exits 2 as click does, no error."""
    code, out, err = run(capsys)
    assert code == 2
    assert "run" in out and "config" in out
    assert "error" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bogus"], "No such command"),
        (["run", "--no-such-flag"], "--no-such-flag"),
        (["run", "--cycles", "0", "--model", "tiny-llama", "--dry-run"], "--cycles"),
        (["run", "--cycles", "many"], "--cycles"),
    ],
    ids=["unknown-command", "unknown-option", "cycles-zero", "cycles-not-int"],
)
def test_click_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """Bad options or commands are usage errors (exit 2) with a pointer to --help."""
    code, _, err = run(capsys, *args)
    assert code == 2
    assert needle in err
    assert "--help" in err
    assert "internal error" not in err and "Traceback" not in err


def test_quiet_and_verbose_together_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``-q -v`` contradict each other: exit 2 naming both."""
    code, _, err = run(capsys, *FLAGS_ONLY, "-q", "-v")
    assert code == 2
    assert "-q" in err and "-v" in err


def test_json_without_dry_run_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``--json`` only describes a plan, so it needs ``--dry-run``."""
    code, _, err = run(capsys, "run", "--model", "tiny-llama", "--json")
    assert code == 2
    assert "--json" in err


def test_no_file_and_no_model_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``llem run`` with neither a study file nor --model says what to give."""
    code, out, err = run(capsys, "run", "--dry-run")
    assert code == 2
    assert out == ""
    assert "nothing to run" in err
    assert "--model" in err


def test_missing_study_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    """A study path that does not exist is a config error naming the path."""
    code, _, err = run(capsys, "run", "/no/such/study.yaml", "--dry-run")
    assert code == 2
    assert "/no/such/study.yaml" in err
    assert "not found" in err


# --------------------------------------------------------------------------- exit codes

EXIT_CODES = [
    (ConfigError("bad", source="x.yaml"), 2),
    (UsageError("bad usage"), 2),
    (PreflightError(["no docker"]), 1),
    (RunnerError("runner broke"), 1),
    (ExperimentError("oom"), 1),
    (MeasurementError("no energy"), 1),
    (LLEMError("generic"), 1),
    (InterruptedStudy("ctrl-c"), 130),
    (KeyboardInterrupt(), 130),
]


@pytest.mark.parametrize(
    ("error", "expected"), EXIT_CODES, ids=[type(e).__name__ for e, _ in EXIT_CODES]
)
def test_errors_map_to_exit_codes(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    expected: int,
) -> None:
    """Each LLEMError subclass (and Ctrl-C) maps to its documented exit code, no traceback."""

    def boom(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(run_module, "load_plan", boom)
    code, _, err = run(capsys, *FLAGS_ONLY)
    assert code == expected
    assert "Traceback" not in err
    if isinstance(error, LLEMError):
        assert str(error).splitlines()[0].split(": ")[-1] in err


def test_unexpected_exception_is_an_internal_error_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug prints "internal error" and the exception, asks for -v, and exits 1."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(run_module, "load_plan", boom)
    code, _, err = run(capsys, *FLAGS_ONLY)
    assert code == 1
    assert "internal error" in err
    assert "RuntimeError: kaboom" in err
    assert "-v" in err
    assert "Traceback" not in err


def test_unexpected_exception_shows_traceback_with_verbose(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -v the same bug also prints its traceback."""

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(run_module, "load_plan", boom)
    code, _, err = run(capsys, *FLAGS_ONLY, "-v")
    assert code == 1
    assert "internal error" in err
    assert "Traceback" in err


def test_error_hint_is_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error's hint is shown as a ``fix:`` line, with rich markup characters kept literal."""

    def boom(*args: object, **kwargs: object) -> None:
        raise ConfigError("bad [thing]", source="s.yaml", problems=["a.b: no"], hint="do [x]")

    monkeypatch.setattr(run_module, "load_plan", boom)
    code, _, err = run(capsys, *FLAGS_ONLY)
    assert code == 2
    assert "s.yaml: bad [thing]" in err
    assert "  - a.b: no" in err
    assert "fix: do [x]" in err
