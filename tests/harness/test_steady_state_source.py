"""The steady-state window in result.json is the one the engine computed.

A continuous-batching backend computes its window with its configured concurrency
(``vllm.max_num_seqs``); the harness reports that window instead of computing a second one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harness.conftest import World, harness_env, make_config

from llenergymeasure.results import ExperimentResult
from llenergymeasure_contract.windows import WindowProblem
from llenergymeasure_harness.backends.steady_state import SteadyStateWindow
from llenergymeasure_harness.experiment import run_experiment


def test_result_reports_the_engines_window(tmp_path: Path) -> None:
    """The backend's ``last_steady_state`` (start, end, problems, reason) reaches result.json,
    and the steady_state_invalid flag is that same window's verdict (computed once)."""
    w = World(batch_size=4)
    backend: Any = w.backend
    inner = backend.run

    windows: dict[int, SteadyStateWindow] = {}  # by output tokens per request of the call

    def run(requests: Any, *args: Any) -> Any:
        records = inner(requests, *args)
        tokens = records[0].output_tokens
        windows[tokens] = backend.last_steady_state = SteadyStateWindow(
            start_s=records[0].submit_s,
            end_s=records[-1].end_s,
            problems=(WindowProblem.UNDERFILLED,),
            reason=f"the engine's own verdict ({tokens} tokens)",
            target_concurrency=2,
            n_requests=len(records),
        )
        return records

    backend.run = run
    cfg = make_config(backend="vllm", pytorch=None, vllm={"max_num_seqs": 2}, n_prompts=8)
    result = run_experiment(harness_env(tmp_path, cfg), w.deps())
    measured = windows[cfg.resolved_output_len()]  # the measured run's (not warmup, prefill)
    on_disk = ExperimentResult.load(tmp_path / "out").steady_state
    for steady in (result.steady_state, on_disk):
        assert steady is not None
        assert (steady.start_s, steady.end_s) == (measured.start_s, measured.end_s)
        assert steady.reason is not None and steady.reason.startswith(measured.reason or "-")
        assert steady.valid is False
        assert steady.problems == [WindowProblem.UNDERFILLED]
    flags = [f for f in result.quality_flags if f.code == "steady_state_invalid"]
    assert len(flags) == 1 and (measured.reason or "-") in flags[0].message
