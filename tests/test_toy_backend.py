"""A backend added through the registry alone: a toy engine from another distribution.

The toy lives in a temporary folder with its own dist-info: a section model, a
:class:`~llenergymeasure_contract.registry.BackendSpec` and an engine class, announced by two
entry points. No file of this repository changes. ``llem`` then plans it, dry-runs it and runs
it with the local runner from a working directory, as a user types it, down to
``summary.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]

TOY_INIT = '''\
"""A toy backend: its section model and its registry entry."""

from pydantic import BaseModel, ConfigDict, Field

from llenergymeasure_contract.registry import BackendSpec


class ToyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(1, ge=1)


SPEC = BackendSpec(
    name="toy",
    section=ToyConfig,
    concurrency_key="batch_size",
    image="toy",
    engine="Toy",
    modules=("toy_backend",),
    needs_gpu=False,
    cap_concurrency=False,
)
'''

TOY_ENGINE = '''\
"""The toy's engine: generates nothing, one millisecond per token."""

from llenergymeasure_harness.testing.fake_backend import FakeBackend


class ToyEngine(FakeBackend):
    name = "toy"

    def __init__(self) -> None:
        super().__init__(step_s=0.001)
'''

ENTRY_POINTS = """\
[llenergymeasure.backends]
toy = toy_backend:SPEC

[llenergymeasure.engines]
toy = toy_backend.engine:ToyEngine
"""

STUDY = """\
name: toy-study
model: tiny-llama
load_format: dummy
backend: toy
precision: float32
n_prompts: 4
max_input_tokens: 8
max_output_tokens: 4
warmup: {n_batches: 1}
baseline: {enabled: false}
gpus: []
sweep:
  toy.batch_size: [1, 2]
execution: {n_cycles: 1, config_gap_s: 0, cycle_gap_s: 0}
runner: local
"""


@pytest.fixture
def toy_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who installed the toy distribution beside llenergymeasure."""
    site = tmp_path / "site"
    pkg = site / "toy_backend"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(TOY_INIT, encoding="utf-8")
    (pkg / "engine.py").write_text(TOY_ENGINE, encoding="utf-8")
    info = site / "toy_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: toy-backend\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["LLEM_USER_CONFIG"] = ""
    return env


def _llem(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LLEM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_toy_backend_plans_dry_runs_and_runs_locally(
    tmp_path: Path, toy_env: dict[str, str]
) -> None:
    """The toy's section, concurrency key and engine come from its entry points only: the plan
    lists two toy experiments, and the local runner measures both into summary.csv."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "study.yaml").write_text(STUDY, encoding="utf-8")

    plan = _llem(work, toy_env, "run", "study.yaml", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    experiments = json.loads(plan.stdout)["experiments"]
    assert [e["config"]["backend"] for e in experiments] == ["toy", "toy"]
    assert [e["config"]["toy"]["batch_size"] for e in experiments] == [1, 2]

    table = _llem(work, toy_env, "run", "study.yaml", "--dry-run")
    assert table.returncode == 0, table.stdout + table.stderr
    assert "toy" in table.stdout

    run = _llem(work, toy_env, "run", "study.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    (summary,) = (work / "results").glob("toy-study_*/summary.csv")
    with summary.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["state"] for r in rows] == ["completed", "completed"]
    assert {r["backend"] for r in rows} == {"toy"}


def test_unknown_backend_without_the_plugin_is_a_config_error(tmp_path: Path) -> None:
    """Without the toy distribution the same study is bad input: exit 2, no traceback."""
    (tmp_path / "study.yaml").write_text(STUDY, encoding="utf-8")
    env = dict(os.environ, LLEM_USER_CONFIG="")
    out = _llem(tmp_path, env, "run", "study.yaml", "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert "unknown key 'toy'" in out.stderr
