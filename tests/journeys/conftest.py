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
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import CPU_STUDY, LlemWorkdir, workdir_image

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "contract" / "llenergymeasure_contract" / "architectures" / "tiny-llama.json"

BASE_STUDY: dict[str, Any] = {
    **CPU_STUDY,
    "name": "journey",
    "model": "./models/tiny",  # relative to the study file, as a user writes it
    "n_prompts": 2,
    "max_input_tokens": 8,
    "max_output_tokens": 4,
    "execution": {"n_cycles": 2, "config_gap_s": 0, "cycle_gap_s": 0},
}


class Journey(LlemWorkdir):
    """A user's working directory, with the tiny model's config at ``./models/tiny``, and
    their ``llem`` commands."""

    base_study = BASE_STUDY

    def __init__(
        self, cwd: Path, image: str, require_in_image: Callable[[str, str, str], None] | None
    ) -> None:
        super().__init__(cwd, image, require_in_image)
        (cwd / "models" / "tiny").mkdir(parents=True)
        shutil.copy(TINY_CONFIG, cwd / "models" / "tiny" / "config.json")


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
def journey(tmp_path: Path, request: pytest.FixtureRequest) -> Journey:
    """A fresh working directory; the image only when the test is docker-marked."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    return Journey(cwd, *workdir_image(request))


def interrupt(proc: subprocess.Popen[str], sig: signal.Signals) -> str:
    """Send ``sig`` to ``llem`` and return its output once it has exited."""
    proc.send_signal(sig)
    return proc.communicate(timeout=120)[0]
