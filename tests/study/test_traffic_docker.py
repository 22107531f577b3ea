"""A study with Poisson traffic, end to end through `llem run` and the Docker runner (CPU)."""

from __future__ import annotations

import pytest
from tests.conftest import LlemWorkdir

from llenergymeasure.config import TrafficConfig
from llenergymeasure_harness.traffic.arrivals import arrival_offsets

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_poisson_study_runs_in_docker_and_records_arrivals(llem_workdir: LlemWorkdir) -> None:
    """`llem run study.yaml` (poisson, tiny model, CPU): arrivals drawn, honoured, recorded."""
    wd = llem_workdir
    wd.require_in_image("llenergymeasure_harness.traffic", "traffic support")
    traffic = {"pattern": "poisson", "rate_per_s": 20.0, "seed": 5, "slo": {"ttft_s": 5.0}}
    wd.write_study(
        name="poisson-cpu",
        max_output_tokens=4,
        pytorch={"batch_size": 2},
        traffic=traffic,
        execution={"n_cycles": 1},
        runner="docker",
    )
    proc = wd.run("run", "study.yaml", timeout_s=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = wd.study_result()  # under ./results, the default
    assert (result.n_runs, result.n_completed) == (1, 1)
    run = result.runs[0]
    res = wd.run_result(run)
    assert res.config.traffic.pattern == "poisson"
    assert res.latency.mode == "arrivals"
    assert res.traffic is not None and res.traffic.slo is not None
    assert res.traffic.rate_per_s == 20.0
    rows = wd.run_requests(run)
    arrivals = rows["arrival_s"]
    offsets = arrival_offsets(TrafficConfig.model_validate(traffic), 8)
    assert offsets is not None
    assert [a - arrivals[0] for a in arrivals] == pytest.approx(offsets, abs=1e-9)
    for submit_s, arrival_s in zip(rows["submit_s"], arrivals, strict=True):
        assert submit_s >= arrival_s
