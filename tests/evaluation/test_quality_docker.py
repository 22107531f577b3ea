"""Accuracy in the same run as energy through the Docker runner (pytorch image, CPU): the
local model folder and the task folder reach the container read-only, and the scores equal
lm-eval's own hf model on the same items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import LlemWorkdir
from tests.evaluation.test_quality_smollm2 import EXAMPLES, hf_scores

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.torch]

LIMIT = 4


def test_docker_run_scores_the_local_tasks_like_lm_eval(
    smollm2_dir: Path, llem_workdir: LlemWorkdir
) -> None:
    """``llem run study.yaml --runner docker`` from a working directory: exit 0, one result
    whose evaluation block has both tasks, its own window and lm-eval's hf scores."""
    wd = llem_workdir
    wd.require_in_image("lm_eval", "quality: (the lm-eval extra)")
    (wd.cwd / "tasks").mkdir()
    for name in ("facts_mc.yaml", "facts_mc.jsonl", "facts_gen.yaml", "facts_gen.jsonl"):
        (wd.cwd / "tasks" / name).write_bytes((EXAMPLES / name).read_bytes())
    wd.write_study(
        name="quality-docker",
        model=str(smollm2_dir),
        load_format="auto",  # the real weights: the scores are compared with lm-eval's
        n_prompts=2,
        max_output_tokens=4,
        pytorch={"batch_size": 1},
        quality={
            "tasks": ["tasks/facts_mc.yaml", "tasks/facts_gen.yaml"],
            "limit": LIMIT,
            "batch_size": 8,
        },
    )
    proc = wd.run("run", "study.yaml", "--runner", "docker", "--yes", timeout_s=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = wd.result_files()
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
