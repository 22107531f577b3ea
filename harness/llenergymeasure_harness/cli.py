"""``python -m llenergymeasure_harness``: run one experiment from the environment contract.

Exit codes (``llenergymeasure_contract.files``)::

    0    success: result.json, requests.parquet (and timeseries.parquet) written
    1    the experiment failed: error.json says in which phase (load|warmup|baseline|measure|
         write); if even error.json cannot be written, the record goes to stderr
    2    LLEM_CONFIG_JSON (or the contract) missing or invalid: error.json phase "config"
         when LLEM_RESULTS_DIR is known
    130  interrupted (SIGINT); 143 terminated (SIGTERM) — error.json written when possible

Secrets such as ``HF_TOKEN`` are read from the environment by the libraries that need them;
the harness never writes the environment anywhere.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llenergymeasure_contract.env import (
    ENV_CONFIG_JSON,
    ENV_RESULTS_DIR,
    ENV_RUN_ID,
    ERROR_FILE,
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    HarnessEnv,
)
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.results import HarnessErrorRecord
from llenergymeasure_contract.timestamps import utc_iso
from llenergymeasure_harness import CONTRACT_VERSION, __version__
from llenergymeasure_harness.experiment import Deps, HarnessTerminated, PhaseError, run_experiment

logger = logging.getLogger("llenergymeasure_harness")

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

EPILOG = """\
environment:
  LLEM_CONFIG_JSON   the ExperimentConfig as JSON (required)
  LLEM_RUN_ID        run id written into the result (required)
  LLEM_RESULTS_DIR   where result.json / error.json and parquet files go (required)
  LLEM_BASELINE_CACHE, LLEM_CYCLE, LLEM_STUDY_ID, LLEM_IMAGE, LLEM_IMAGE_DIGEST,
  LLEM_IMAGE_LABELS_JSON, LLEM_HOST_UID, LLEM_HOST_GID (optional); HF_TOKEN (secret, never written)
  LLEM_GROUP_FILE    an engine group (JSON): run each member on one loaded engine, each into
                     its own results folder (execution.reuse_engine)

exit codes: 0 ok, 1 failed (error.json has the phase), 2 bad config, 130/143 interrupted

Example:
  LLEM_CONFIG_JSON='{"model":"tiny-llama","load_format":"dummy","precision":"float32",
  "n_prompts":4,"max_input_tokens":32,"max_output_tokens":8}' LLEM_RUN_ID=demo \\
  LLEM_RESULTS_DIR=/tmp/demo python -m llenergymeasure_harness
"""


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def write_error(
    results_dir: str | None,
    *,
    run_id: str | None,
    phase: str,
    exc: BaseException,
    tb: str | None,
) -> bool:
    """Write error.json (atomically); on failure print the record to stderr. True if written."""
    record = HarnessErrorRecord(
        run_id=run_id,
        phase=phase,
        error_class=type(exc).__name__,
        message=str(exc),
        traceback=tb,
        occurred_at=utc_iso(),
    )
    if results_dir:
        try:
            record.write(Path(results_dir) / ERROR_FILE)
            from llenergymeasure_harness.outputs import chown_outputs

            uid = os.environ.get("LLEM_HOST_UID")
            gid = os.environ.get("LLEM_HOST_GID")
            if uid and uid.isdigit():
                chown_outputs(
                    Path(results_dir), int(uid), int(gid) if gid and gid.isdigit() else None
                )
            return True
        except OSError as io_exc:
            _err(f"llem-harness: cannot write {ERROR_FILE}: {io_exc}")
    _err("llem-harness-error " + record.model_dump_json())
    return False


def _check_config(source: str | None, environ: Mapping[str, str]) -> int:
    from pydantic import ValidationError

    from llenergymeasure_contract.experiment import ExperimentConfig

    try:
        if source:
            text = Path(source).read_text(encoding="utf-8")
            data: Any
            if source.endswith((".yaml", ".yml")):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
            cfg = ExperimentConfig.model_validate(data)
        else:
            raw = environ.get(ENV_CONFIG_JSON)
            if not raw:
                _err(f"no config: pass a file or set {ENV_CONFIG_JSON}")
                return EXIT_CONFIG
            cfg = ExperimentConfig.model_validate_json(raw)
    except (OSError, ValueError, ValidationError) as exc:
        _err(f"invalid config: {exc}")
        return EXIT_CONFIG
    sys.stdout.write(json.dumps(cfg.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
    _err(f"config_hash: {cfg.config_hash}")
    return EXIT_OK


def _run_group(env: HarnessEnv, deps: Deps | None) -> int:
    """Run the engine group named by ``LLEM_GROUP_FILE``; one error.json per failed member.

    Exit code: 0 when every member completed, 1 when any failed, 2 for an unreadable group
    file, 130/143 when interrupted (the members not started have no file).
    """
    from pydantic import ValidationError

    from llenergymeasure_contract.reuse import EngineGroup
    from llenergymeasure_harness.group import run_group

    assert env.group_file is not None
    try:
        group = EngineGroup.load(env.group_file)
    except (OSError, ValidationError) as exc:
        err = ConfigError(f"{env.group_file} is not a readable engine group: {exc}")
        write_error(env.results_dir, run_id=env.run_id, phase="config", exc=err, tb=None)
        return EXIT_CONFIG

    def on_error(menv: HarnessEnv, phase: str, exc: BaseException, tb: str | None) -> None:
        logger.error("run %s failed in phase %s: %s", menv.run_id, phase, exc)
        write_error(menv.results_dir, run_id=menv.run_id, phase=phase, exc=exc, tb=tb)

    outcome = run_group(env, group, deps, on_error)
    done = sum(1 for m in outcome.members if m.state == "completed")
    logger.info(
        "engine group %s: %d of %d runs completed on %d engine load(s)",
        group.group_id,
        done,
        len(group.members),
        outcome.loads,
    )
    if isinstance(outcome.interrupted, HarnessTerminated):
        return EXIT_TERMINATED
    if outcome.interrupted is not None:
        return EXIT_INTERRUPTED
    return EXIT_OK if done == len(group.members) else EXIT_FAILED


def _on_sigterm(signum: int, frame: Any) -> None:
    raise HarnessTerminated("terminated by SIGTERM")


def main(
    argv: list[str] | None = None,
    environ: Mapping[str, str] | None = None,
    deps: Deps | None = None,
) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m llenergymeasure_harness",
        description="Measure one LLM inference experiment (energy, throughput, latency) "
        "as described by the environment contract, and write its results directory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"llenergymeasure_harness {__version__} (contract {CONTRACT_VERSION})",
    )
    parser.add_argument(
        "--check-config",
        nargs="?",
        const="",
        metavar="FILE",
        help="validate FILE (JSON/YAML) or LLEM_CONFIG_JSON, print the resolved config, "
        "exit 0 (valid) or 2 (invalid)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    env_map: Mapping[str, str] = os.environ if environ is None else environ
    if args.check_config is not None:
        return _check_config(args.check_config or None, env_map)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    results_dir = env_map.get(ENV_RESULTS_DIR) or None
    run_id = env_map.get(ENV_RUN_ID) or None
    try:
        env = HarnessEnv.from_env(env_map)
    except ConfigError as exc:
        write_error(results_dir, run_id=run_id, phase="config", exc=exc, tb=None)
        logger.error("invalid harness environment: %s", exc)
        return EXIT_CONFIG
    try:
        Path(env.results_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        write_error(None, run_id=env.run_id, phase="write", exc=exc, tb=None)
        return EXIT_FAILED

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (tests)
        previous = None
    if env.group_file:
        try:
            return _run_group(env, deps)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    try:
        result = run_experiment(env, deps)
    except PhaseError as err:
        logger.error("experiment failed in phase %s: %s", err.phase, err.cause)
        write_error(
            env.results_dir, run_id=env.run_id, phase=err.phase, exc=err.cause, tb=err.traceback
        )
        if isinstance(err.cause, HarnessTerminated):
            return EXIT_TERMINATED
        if isinstance(err.cause, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        return EXIT_CONFIG if err.phase == "config" else EXIT_FAILED
    except KeyboardInterrupt as exc:
        write_error(env.results_dir, run_id=env.run_id, phase="measure", exc=exc, tb=None)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    e = result.energy
    logger.info(
        "done: %.1f output tok/s, %s J/output token, energy %s J (%s)",
        result.throughput.output_tokens_per_s,
        result.efficiency.j_per_output_token,
        e.gpu_energy_j,
        e.sampler,
    )
    return EXIT_OK
