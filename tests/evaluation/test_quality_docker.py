"""Accuracy in the same run as energy through the Docker runner (pytorch image, CPU): the
local model folder and the task folder reach the container read-only, and the scores equal
lm-eval's own hf model on the same items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from tests.evaluation.test_quality_smollm2 import EXAMPLES, hf_scores

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.torch]

LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
LIMIT = 4


def test_docker_run_scores_the_local_tasks_like_lm_eval(
    smollm2_dir: Path,
    tmp_path: Path,
    pytorch_test_image: str,
    require_in_image: Callable[[str, str, str], None],
) -> None:
    """``llem run study.yaml --runner docker`` from a working directory: exit 0, one result
    whose evaluation block has both tasks, its own window and lm-eval's hf scores."""
    require_in_image(pytorch_test_image, "lm_eval", "quality: (the lm-eval extra)")
    (tmp_path / "tasks").mkdir()
    for name in ("facts_mc.yaml", "facts_mc.jsonl", "facts_gen.yaml", "facts_gen.jsonl"):
        (tmp_path / "tasks" / name).write_bytes((EXAMPLES / name).read_bytes())
    study = {
        "name": "quality-docker",
        "model": str(smollm2_dir),
        "precision": "float32",
        "gpus": [],
        "n_prompts": 2,
        "max_input_tokens": 16,
        "max_output_tokens": 4,
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "pytorch": {"batch_size": 1},
        "quality": {
            "tasks": ["tasks/facts_mc.yaml", "tasks/facts_gen.yaml"],
            "limit": LIMIT,
            "batch_size": 8,
        },
        "images": {"pytorch": pytorch_test_image},
        "execution": {"config_gap_s": 0, "cycle_gap_s": 0},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    env = {
        **os.environ,
        "LLEM_NO_GPU": "1",
        "LLEM_USER_CONFIG": str(tmp_path / "no-user-config.yaml"),
    }
    proc = subprocess.run(
        [*LLEM, "run", "study.yaml", "--runner", "docker", "--yes"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = sorted((tmp_path / "results").glob("*/runs/*/result.json"))
    r = json.loads(path.read_text())
    ev = r["evaluation"]
    assert r["environment"]["in_container"] is True
    assert {t["task"] for t in ev["tasks"]} == {"llem_facts_mc", "llem_facts_gen"}
    assert r["timings"]["evaluation_s"] == ev["duration_s"] > 0
    assert ev["output_tokens"] > 0 and ev["gpu_energy_j"] is None  # CPU: not measured
    hf = hf_scores(smollm2_dir, "float32", limit=LIMIT)
    for task in ev["tasks"]:
        assert task["n_items"] == LIMIT
        for key, value in task["metrics"].items():
            assert value == pytest.approx(hf[task["task"]][key]), (task["task"], key)
