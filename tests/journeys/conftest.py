"""What a user does, typed as a user types it: the real ``llem`` in a working directory.

Each journey gets a fresh temporary working directory holding ``study.yaml`` and a model
config at a relative path (``./models/tiny/config.json``, random weights), runs ``llem`` there
with the defaults (results in ``./results``), and looks only at what a user can see: exit
codes, output, ``manifest.json``, the ``result.json`` files, leftover containers (by the
study's ``llem.study`` label), and whether a secret's value reached any file.

The experiments are the CPU pytorch image (``llenergymeasure/pytorch:test-cpu``, or
``$LLEM_TEST_PYTORCH_IMAGE``) on a tiny model with ``gpus: []``; tests needing the engine
are marked ``docker`` (skipped without one, failing under ``LLEM_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
TINY_CONFIG = REPO / "contract" / "llenergymeasure_contract" / "architectures" / "tiny-llama.json"

BASE_STUDY: dict[str, Any] = {
    "name": "journey",
    "model": "./models/tiny",  # relative to the study file, as a user writes it
    "load_format": "dummy",
    "precision": "float32",
    "n_prompts": 2,
    "max_input_tokens": 8,
    "max_output_tokens": 4,
    "warmup": {"n_batches": 1},
    "baseline": {"enabled": False},
    "gpus": [],
    "execution": {"n_cycles": 2, "config_gap_s": 0, "cycle_gap_s": 0},
    "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
}


class Journey:
    """A user's working directory and their ``llem`` commands."""

    def __init__(self, cwd: Path, image: str) -> None:
        self.cwd = cwd
        self.image = image
        self.env = {
            **os.environ,
            "LLEM_NO_GPU": "1",  # CPU-only host: containers get no GPU request
            "LLEM_USER_CONFIG": str(cwd / "no-user-config.yaml"),
        }
        (cwd / "models" / "tiny").mkdir(parents=True)
        shutil.copy(TINY_CONFIG, cwd / "models" / "tiny" / "config.json")

    def write_study(self, name: str = "study.yaml", **fields: Any) -> Path:
        """``study.yaml`` in the working directory: the base study with ``fields`` merged."""
        data = json.loads(json.dumps(BASE_STUDY))
        data["images"] = {"pytorch": self.image}
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.cwd / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run(
        self, *args: str, timeout_s: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``llem ARGS`` in the working directory, to the end."""
        return subprocess.run(
            [*LLEM, *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """``llem ARGS`` in the background (to signal it, or race a second one)."""
        return subprocess.Popen(
            [*LLEM, *args],
            cwd=self.cwd,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # ---------------------------------------------------------------- what the user sees

    def study_dir(self) -> Path:
        """The one study folder under ./results."""
        (found,) = [p.parent for p in (self.cwd / "results").glob("*/manifest.json")]
        return found

    def manifest(self) -> dict[str, Any]:
        """manifest.json as the user reads it."""
        return dict(json.loads((self.study_dir() / "manifest.json").read_text()))

    def run_states(self) -> list[str]:
        """Each run's state, in plan order."""
        return [r["state"] for r in self.manifest()["runs"]]

    def result_files(self) -> list[Path]:
        """Every result.json under ./results (a run measured twice would show twice)."""
        return sorted((self.cwd / "results").glob("*/runs/*/result.json"))

    def wait_for(self, proc: subprocess.Popen[str], what: str, cond: Any, timeout_s: float) -> Any:
        """Poll ``cond()`` until truthy while ``proc`` runs; fail with its output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = cond()
            except (OSError, ValueError, KeyError, IndexError):
                value = None
            if value:
                return value
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        out = proc.communicate(timeout=60)[0] if proc.poll() is not None else "(still running)"
        proc.kill()
        raise AssertionError(f"never saw {what} (llem exited {proc.returncode}): {out}")

    def running_run(self, index: int) -> str | None:
        """The run id of run ``index`` (1-based) once the manifest says it is running."""
        runs = self.manifest()["runs"]
        run = runs[index - 1]
        return str(run["run_id"]) if run["state"] == "running" else None


def containers_of(study_id: str) -> list[str]:
    """Names of this study's containers on the engine (other suites run theirs beside it)."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=llem.study={study_id}",
            "--format",
            "{{.Names}}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


@functools.cache
def image_passes_host_hash(image: str) -> bool:
    """Whether the image's harness knows ``LLEM_CONFIG_HASH`` (built from this checkout).

    CI builds the test image from the checkout, so there it always does; a developer's image
    built before this change does not, and the config_hash check is then left out (under
    ``LLEM_REQUIRE_DOCKER=1`` it is never left out).
    """
    probe = (
        'site=$(python3 -c "import llenergymeasure_harness as h, os; '
        'print(os.path.dirname(os.path.dirname(h.__file__)))"); '
        "grep -rqs LLEM_CONFIG_HASH $site/llenergymeasure*"
    )
    res = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", probe],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return res.returncode == 0


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(path)
    return hits


@pytest.fixture
def journey(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Journey]:
    """A fresh working directory; the image only when the test is docker-marked."""
    image = "llenergymeasure/pytorch:test-cpu"
    if request.node.get_closest_marker("docker") is not None:
        image = request.getfixturevalue("pytorch_test_image")
    cwd = tmp_path / "work"
    cwd.mkdir()
    yield Journey(cwd, image)


def interrupt(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    """Send ``sig`` to ``llem`` and return its output once it has exited."""
    proc.send_signal(sig)
    return proc.communicate(timeout=120)[0]
