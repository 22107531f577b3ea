"""Accuracy in the same run as energy, on a real model (SmolLM2-135M-Instruct, CPU), through
the real CLI: the scores equal lm-eval's own ``hf`` model on the same items."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "quality"
REPO = Path(__file__).resolve().parents[2]
#: Items per task: small, the CPU is shared; the same items are given to lm-eval's hf model.
LIMIT = 8
PRECISIONS = ("float32", "bfloat16", "float16")

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def study_text(model: Path, tasks_dir: str) -> str:
    return f"""name: quality-cpu
model: {model}
gpus: []
n_prompts: 2
max_input_tokens: 16
max_output_tokens: 4
warmup: {{n_batches: 1}}
pytorch: {{batch_size: 1}}
quality:
  tasks: [{tasks_dir}/facts_mc.yaml, {tasks_dir}/facts_gen.yaml]
  limit: {LIMIT}
  batch_size: 8
sweep:
  precision: [{", ".join(PRECISIONS)}]
"""


def hf_scores(model: Path, precision: str, limit: int = LIMIT) -> dict[str, Any]:
    """lm-eval's own hf model on the same tasks, items, few-shot setting and seeds."""
    # lm-eval reads a task's relative data_files from the working directory.
    with contextlib.chdir(EXAMPLES):
        out = _hf_evaluate(model, precision, limit)
    assert out is not None
    return dict(out["results"])


def _hf_evaluate(model: Path, precision: str, limit: int) -> Any:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model},dtype={precision}",
        tasks=["llem_facts_mc", "llem_facts_gen"],
        task_manager=TaskManager(include_path=str(EXAMPLES), include_defaults=False),
        limit=limit,
        batch_size=8,
        device="cpu",
        bootstrap_iters=1000,
        random_seed=1234,
        numpy_random_seed=1234,
        torch_random_seed=1234,
        fewshot_random_seed=1234,
    )


def test_precision_sweep_reports_accuracy_beside_energy_and_matches_lm_eval(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``llem run study.yaml --runner local`` sweeps precision over the two local tasks: each
    result carries lm-eval's scores (equal to its hf model's), and an evaluation window apart
    from the performance window (energy None on a CPU; its own duration and tokens)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tasks").symlink_to(EXAMPLES)
    Path("study.yaml").write_text(study_text(smollm2_dir, "tasks"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(REPO / p) for p in ("contract", "harness", "orchestrator")
        ),
    }
    proc = subprocess.run(
        ["llem", "run", "study.yaml", "--runner", "local", "--no-gaps", "--yes"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = sorted(Path("results").glob("*/runs/*/result.json"))
    assert len(results) == len(PRECISIONS)
    diffs: dict[str, float] = {}
    beyond: list[str] = []
    for path in results:
        r = json.loads(path.read_text())
        ev = r["evaluation"]
        precision = r["config"]["precision"]
        assert ev["lm_eval_version"] == "0.4.13"
        assert {t["task"] for t in ev["tasks"]} == {"llem_facts_mc", "llem_facts_gen"}
        # separate windows: the evaluation pass has its own duration and its own tokens
        assert r["timings"]["evaluation_s"] == ev["duration_s"] > 0
        assert r["timings"]["measure_s"] > 0 and r["timings"]["measure_s"] != ev["duration_s"]
        assert ev["input_tokens"] > 0 and ev["output_tokens"] > 0
        assert ev["output_tokens"] != r["throughput"]["output_tokens"]
        assert ev["gpu_energy_j"] is None and r["energy"]["gpu_energy_j"] is None  # CPU
        assert ev["quality_per_joule"] is None
        hf = hf_scores(smollm2_dir, precision)
        for task in ev["tasks"]:
            assert task["n_items"] == LIMIT and task["version"] == "1.0"
            assert task["samples_sha256"] and task["config_sha256"]
            for key, value in task["metrics"].items():
                theirs = hf[task["task"]][key]
                stderr = task["stderr"][key] or 0.0
                diffs[f"{precision}/{task['task']}/{key}"] = value - theirs
                if abs(value - theirs) > stderr + 1e-9:
                    beyond.append(f"{precision}/{task['task']}/{key}")
    print("differences from lm-eval hf:", json.dumps(diffs, indent=1))
    assert beyond == [], beyond
