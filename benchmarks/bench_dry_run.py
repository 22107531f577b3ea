"""Benchmark: expand and dry-run print a 10,000-experiment sweep.

Target (issue 2): well under one second of CPU for expansion + plan + table. Prints CPU seconds
per phase (``time.process_time``), the median of several repeats, and the ratio to the target.

Run: python benchmarks/bench_dry_run.py [--n-repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

from llenergymeasure.cli.render import plan_table
from llenergymeasure.config.loader import expand_study
from llenergymeasure.study.plan import build_plan

TARGET_CPU_S = 1.0

# 10 x 10 x 10 x 10 = 10,000 experiments, all pytorch, on a built-in architecture.
STUDY = {
    "name": "bench-10k",
    "model": "llama-3.1-8b",
    "load_format": "dummy",
    "n_prompts": 1000,
    "sweep": {
        "pytorch.batch_size": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        "max_output_tokens": [16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
        "decoder.temperature": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        "random_seed": list(range(10)),
    },
}


def one_round() -> dict[str, float]:
    t0 = time.process_time()
    study = expand_study(STUDY, source="bench.yaml", base_dir=Path.cwd())
    t1 = time.process_time()
    plan = build_plan(study)
    t2 = time.process_time()
    text = plan_table(plan)
    io.StringIO().write(text)
    t3 = time.process_time()
    doc = json.dumps(plan.to_json_dict())
    t4 = time.process_time()
    assert len(plan.experiments) == 10_000, len(plan.experiments)
    assert len(doc) > 0
    return {
        "expand_s": t1 - t0,
        "plan_s": t2 - t1,
        "table_s": t3 - t2,
        "json_s": t4 - t3,
        "dry_run_total_s": t3 - t0,
    }


def report(label: str, rounds: list[dict[str, float]]) -> float:
    print(f"{label}, median of {len(rounds)} repeats (CPU seconds):")
    for key in rounds[0]:
        med = statistics.median(r[key] for r in rounds)
        print(f"  {key:<16} {med:8.3f} s")
    return statistics.median(r["dry_run_total_s"] for r in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-repeats", type=int, default=5)
    args = parser.parse_args()
    one_round()  # warm imports and caches
    total = report("10,000-experiment sweep", [one_round() for _ in range(args.n_repeats)])
    print(
        f"dry-run (expand + plan + table), 10,000 experiments: {total:.3f} s CPU; "
        f"ratio to the {TARGET_CPU_S:.0f} s target: {total / TARGET_CPU_S:.2f}"
    )


if __name__ == "__main__":
    main()
