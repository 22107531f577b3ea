"""The entry point: exit codes and error.json for every failure path; --help, --check-config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.harness.conftest import World, make_config

from llenergymeasure.contract import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from llenergymeasure.results import ExperimentResult, HarnessErrorRecord
from llenergymeasure_harness.cli import main

SECRET = "hf_SECRET_do_not_write_0123456789"


def _environ(tmp_path: Path, config_json: str | None = None, **extra: str) -> dict[str, str]:
    env = {
        "LLEM_CONFIG_JSON": config_json if config_json is not None else make_config().to_json(),
        "LLEM_RUN_ID": "run-7",
        "LLEM_RESULTS_DIR": str(tmp_path / "out"),
        "HF_TOKEN": SECRET,
    }
    env.update(extra)
    return env


def _error(tmp_path: Path) -> HarnessErrorRecord:
    return HarnessErrorRecord.load(tmp_path / "out")


def test_success_exit_0_and_no_secret_written(tmp_path: Path, world: World) -> None:
    """A good run exits 0, writes result.json, and HF_TOKEN appears in no output file."""
    assert main([], _environ(tmp_path), world.deps()) == EXIT_OK
    out = tmp_path / "out"
    assert ExperimentResult.load(out).run_id == "run-7"
    assert not (out / "error.json").exists()
    for f in out.iterdir():
        assert SECRET.encode() not in f.read_bytes()


def test_invalid_config_json_is_phase_config_exit_2(tmp_path: Path, world: World) -> None:
    """Unknown keys in LLEM_CONFIG_JSON: exit 2 and error.json with phase 'config'."""
    code = main([], _environ(tmp_path, '{"model": "x", "bogus": 1}'), world.deps())
    assert code == EXIT_CONFIG
    err = _error(tmp_path)
    assert err.phase == "config"
    assert err.error_class == "ConfigError"
    assert err.run_id == "run-7"


def test_missing_contract_variable_exit_2(tmp_path: Path, world: World) -> None:
    """Without LLEM_CONFIG_JSON the harness exits 2 and still writes error.json."""
    env = _environ(tmp_path)
    del env["LLEM_CONFIG_JSON"]
    assert main([], env, world.deps()) == EXIT_CONFIG
    assert _error(tmp_path).phase == "config"


def test_no_results_dir_exit_2_record_on_stderr(tmp_path: Path, world: World, capsys) -> None:
    """With no results directory the error record goes to stderr."""
    env = _environ(tmp_path)
    del env["LLEM_RESULTS_DIR"]
    assert main([], env, world.deps()) == EXIT_CONFIG
    assert "llem-harness-error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fail_in", "warmup_runs", "phase"),
    [("load", 0, "load"), ("run", 0, "warmup"), ("measure", 1, "measure")],
)
def test_backend_failures_exit_1_with_phase(
    tmp_path: Path, fail_in: str, warmup_runs: int, phase: str
) -> None:
    """Load, warmup and measure failures exit 1; error.json names phase, class and message."""
    w = World(fail_in=fail_in, warmup_runs=warmup_runs)
    assert main([], _environ(tmp_path), w.deps()) == EXIT_FAILED
    err = _error(tmp_path)
    assert err.phase == phase
    assert err.error_class == "FakeBackendError"
    assert err.traceback and "FakeBackendError" in err.traceback
    assert not (tmp_path / "out" / "result.json").exists()


def test_baseline_failure_is_phase_baseline(tmp_path: Path, world: World) -> None:
    """An NVML failure while measuring idle power is reported in phase 'baseline'."""

    def broken(index: int) -> int:
        raise RuntimeError("counter read failed")

    calls = {"n": 0}
    real = world.nvml.energy_mj

    def flaky(index: int):
        calls["n"] += 1
        return real(index) if calls["n"] == 1 else broken(index)

    world.nvml.energy_mj = flaky  # type: ignore[method-assign]
    assert main([], _environ(tmp_path), world.deps()) == EXIT_FAILED
    assert _error(tmp_path).phase == "baseline"


def test_write_failure_is_phase_write(tmp_path: Path, world: World, monkeypatch) -> None:
    """A failure writing the outputs is reported in phase 'write'."""
    import llenergymeasure_harness.experiment as exp

    def boom(path, columns):
        raise OSError("disk full")

    monkeypatch.setattr(exp, "write_parquet_atomic", boom)
    assert main([], _environ(tmp_path), world.deps()) == EXIT_FAILED
    err = _error(tmp_path)
    assert err.phase == "write"
    assert "disk full" in err.message


def test_unwritable_results_dir_exit_1(tmp_path: Path, world: World, capsys) -> None:
    """A results 'directory' that is a file: exit 1, record on stderr."""
    (tmp_path / "out").write_text("not a directory")
    assert main([], _environ(tmp_path), world.deps()) == EXIT_FAILED
    assert "llem-harness-error" in capsys.readouterr().err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_results_dir_exit_1(tmp_path: Path, world: World) -> None:
    """A read-only results directory fails in phase write (record on stderr)."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main([], _environ(tmp_path), world.deps()) == EXIT_FAILED
    finally:
        out.chmod(0o700)


def test_chown_to_host_user_when_root(tmp_path: Path, world: World, monkeypatch) -> None:
    """As root with LLEM_HOST_UID/GID set, every output is chowned to that user."""
    from llenergymeasure_harness import outputs

    seen: list[tuple[str, int, int]] = []
    monkeypatch.setattr(outputs.os, "geteuid", lambda: 0)
    monkeypatch.setattr(outputs.os, "chown", lambda p, u, g: seen.append((Path(p).name, u, g)))
    from llenergymeasure.contract import HarnessEnv
    from llenergymeasure_harness.experiment import run_experiment

    env = HarnessEnv.from_env(_environ(tmp_path, LLEM_HOST_UID="1234", LLEM_HOST_GID="99"))
    run_experiment(env, world.deps())
    names = {n for n, u, g in seen if (u, g) == (1234, 99)}
    assert {"out", "result.json", "requests.parquet"} <= names


def test_version_and_help(capsys) -> None:
    """--version prints the version; --help documents exit codes and the environment."""
    with pytest.raises(SystemExit) as info:
        main(["--version"], {})
    assert info.value.code == 0
    assert "llenergymeasure_harness" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"], {})
    out = capsys.readouterr().out
    assert "LLEM_CONFIG_JSON" in out and "exit codes" in out and "Example:" in out


def test_check_config_from_env_and_file(tmp_path: Path, capsys) -> None:
    """--check-config prints the resolved config (exit 0) or exits 2 when invalid."""
    assert main(["--check-config"], {"LLEM_CONFIG_JSON": make_config().to_json()}) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    assert printed["pytorch"]["batch_size"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x", "n_prompts": 0}')
    assert main(["--check-config", str(bad)], {}) == EXIT_CONFIG
    good = tmp_path / "good.yaml"
    good.write_text("model: tiny-llama\nload_format: dummy\n")
    assert main(["--check-config", str(good)], {}) == EXIT_OK
    assert main(["--check-config"], {}) == EXIT_CONFIG


def test_module_entry_point_bad_config_subprocess(tmp_path: Path) -> None:
    """`python -m llenergymeasure_harness` with a bad config exits 2 and writes error.json."""
    env = {**os.environ, **_environ(tmp_path, "{broken")}
    proc = subprocess.run(
        [sys.executable, "-m", "llenergymeasure_harness"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert _error(tmp_path).phase == "config"
    assert SECRET not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("exc_name", "code"), [("HarnessTerminated", 143), ("KeyboardInterrupt", 130)]
)
def test_interrupts_write_error_json_with_phase(
    tmp_path: Path, world: World, exc_name: str, code: int
) -> None:
    """SIGTERM (HarnessTerminated) and SIGINT during measure: error.json phase measure, 143/130."""
    import llenergymeasure_harness.experiment as exp

    exc_type = getattr(exp, exc_name, None) or KeyboardInterrupt
    orig = world.backend.run

    def run(reqs):
        if world.backend.runs >= 1:  # after warmup
            raise exc_type("stop")
        return orig(reqs)

    world.backend.run = run  # type: ignore[method-assign]
    assert main([], _environ(tmp_path), world.deps()) == code
    err = _error(tmp_path)
    assert err.phase == "measure"
    assert err.error_class == exc_name


@pytest.mark.parametrize(("host", "says"), [("0", "update the host"), ("999", "update the image")])
def test_host_of_another_contract_is_refused(tmp_path: Path, host: str, says: str) -> None:
    """The harness refuses a host that speaks another contract version, naming the side to
    update, instead of failing deep inside the run."""
    from llenergymeasure_contract.env import HarnessEnv
    from llenergymeasure_contract.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        HarnessEnv.from_env(_environ(tmp_path, LLEM_CONTRACT_VERSION=host))
    assert says in str(info.value)
