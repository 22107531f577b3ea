"""What the Docker runner costs beyond the work itself.

1. Per-experiment fixed cost: ``DockerRunner.run`` (create, start, log streaming, wait,
   inspect, classify, remove) of a container that does nothing (``true``), against a bare
   ``docker run --rm IMAGE true`` through the Docker CLI, and against the bare SDK sequence
   (create/start/wait/remove, no logs, no classification). Median of N each; the ratio
   runner / bare CLI is the figure to watch.
2. Study wall-time overhead: ``run_study`` of K runs whose harness sleeps S seconds and writes a
   result, no gaps; overhead = study wall time - K x S, split into per-run container overhead
   (sum of run durations - K x S) and orchestration outside runs (preflight, manifest,
   StudyResult, Parquet/CSV: wall - sum of run durations).

Needs a Docker engine and a local image with python3 (default ``llem-testbase:bookworm``).

    python benchmarks/bench_runner_overhead.py --n 10 --study-runs 6 --sleep 1
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.runners.dockerutil: the stand-in harness


def bench_fixed_cost(client: Any, image: str, n: int) -> dict[str, float]:
    from llenergymeasure.config import ExperimentConfig
    from llenergymeasure.runners.docker import DockerRunner
    from llenergymeasure.runners.spec import ContainerSettings, RunRequest

    cfg = ExperimentConfig(model="tiny-llama", load_format="dummy", n_prompts=4)
    settings = ContainerSettings(
        network_mode="none", request_gpus=False, command=("true",), ipc_mode=None, ulimits={}
    )
    runner = DockerRunner(settings, client=client)
    tmp = Path(tempfile.mkdtemp(prefix="llem-bench-"))

    def runner_once(i: int) -> float:
        req = RunRequest(
            config=cfg,
            study_id="bench",
            run_id=f"bench-{i}",
            cycle=1,
            run_dir=tmp / f"r{i}",
            log_path=tmp / f"r{i}.log",
            image=image,
        )
        t0 = time.perf_counter()
        out = runner.run(req)
        dt = time.perf_counter() - t0
        assert out.exit_code == 0, out.message
        return dt

    def cli_once(i: int) -> float:
        t0 = time.perf_counter()
        subprocess.run(["docker", "run", "--rm", "--network", "none", image, "true"], check=True)
        return time.perf_counter() - t0

    def sdk_once(i: int) -> float:
        t0 = time.perf_counter()
        ct = client.containers.create(image, ["true"], network_mode="none")
        ct.start()
        ct.wait()
        ct.remove(force=True)
        return time.perf_counter() - t0

    results: dict[str, list[float]] = {"runner": [], "docker_run_cli": [], "sdk_bare": []}
    for fn in (runner_once, cli_once, sdk_once):  # one warm-up each
        fn(-1)
    for i in range(n):  # interleaved so drift hits all three alike
        results["runner"].append(runner_once(i))
        results["docker_run_cli"].append(cli_once(i))
        results["sdk_bare"].append(sdk_once(i))
    med = {k: statistics.median(v) for k, v in results.items()}
    med["ratio_runner_vs_cli"] = med["runner"] / med["docker_run_cli"]
    med["ratio_runner_vs_sdk"] = med["runner"] / med["sdk_bare"]
    return med


def bench_study(client: Any, image: str, runs: int, sleep_s: float) -> dict[str, float]:
    from rich.console import Console
    from tests.runners.dockerutil import FAKE_COMMAND, result_template

    from llenergymeasure.config.loader import expand_study
    from llenergymeasure.study.executor import StudyRunOptions, run_study
    from llenergymeasure.study.plan import build_plan

    root = Path(tempfile.mkdtemp(prefix="llem-bench-study-"))
    data = {
        "name": "bench",
        "model": "tiny-llama",
        "load_format": "dummy",
        "n_prompts": 4,
        "sweep": {"random_seed": list(range(runs))},
        "execution": {"n_cycles": 1, "config_gap_s": 0, "cycle_gap_s": 0},
        "images": {"pytorch": image},
        "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None},
    }
    plan = build_plan(expand_study(data, source="<bench>", base_dir=root, results_dir=str(root)))
    opts = StudyRunOptions(
        quiet=True,
        interactive=False,
        request_gpus=False,
        min_free_bytes=0,
        container_command=FAKE_COMMAND,
        extra_env={
            "LLEM_FAKE_MODE": "slow",
            "LLEM_FAKE_SLEEP": str(sleep_s),
            "LLEM_FAKE_RESULT": result_template(),
        },
    )
    t0 = time.perf_counter()
    result = run_study(plan, opts, docker_client=client, console=Console(file=io.StringIO()))
    wall = time.perf_counter() - t0
    assert result.n_completed == runs, [r.message for r in result.runs]
    work = runs * sleep_s
    return {
        "runs": runs,
        "harness_work_s": work,
        "sum_run_durations_s": result.experiments_s,
        "study_wall_s": wall,
        "overhead_total_s": wall - work,
        "overhead_per_run_s": (wall - work) / runs,
        "container_overhead_per_run_s": (result.experiments_s - work) / runs,
        "orchestration_outside_runs_s": wall - result.experiments_s,
        "overhead_pct_of_work": 100 * (wall - work) / work,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="llem-testbase:bookworm")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--study-runs", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=1.0)
    args = parser.parse_args()
    import docker

    client = docker.from_env(timeout=120)
    fixed = bench_fixed_cost(client, args.image, args.n)
    print(f"per-experiment fixed cost, median of {args.n} (image {args.image}, no-op `true`):")
    print(f"  DockerRunner.run           {fixed['runner'] * 1000:7.0f} ms")
    print(f"  docker run --rm (CLI)      {fixed['docker_run_cli'] * 1000:7.0f} ms")
    print(f"  bare SDK create/start/wait/remove {fixed['sdk_bare'] * 1000:7.0f} ms")
    print(f"  ratio runner / docker run  {fixed['ratio_runner_vs_cli']:.2f}")
    print(f"  ratio runner / bare SDK    {fixed['ratio_runner_vs_sdk']:.2f}")
    study = bench_study(client, args.image, args.study_runs, args.sleep)
    print(
        f"study of {study['runs']:.0f} runs x {args.sleep:g} s harness work, no gaps "
        "(manifest, preflight, results included):"
    )
    print(f"  study wall                 {study['study_wall_s']:7.2f} s")
    print(f"  harness work               {study['harness_work_s']:7.2f} s")
    print(
        f"  overhead                   {study['overhead_total_s']:7.2f} s "
        f"({study['overhead_per_run_s']:.2f} s/run, {study['overhead_pct_of_work']:.0f} % of work)"
    )
    print(f"    in-run container cost    {study['container_overhead_per_run_s']:7.2f} s/run")
    print(f"    outside runs             {study['orchestration_outside_runs_s']:7.2f} s")
    client.close()


if __name__ == "__main__":
    main()
