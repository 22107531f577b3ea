"""Where a vLLM load's time goes, parsed from two real vLLM 0.26.0 load logs (H100, 2026-12-07,
Llama-3.1-8B dummy weights, bf16, ``--runner local``): max_num_seqs 256 with a cold compile
cache, then 512 with the cache warm but torch.compile still run (the model path differed).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from llenergymeasure_contract.results import LoadBreakdown, Timings
from llenergymeasure_contract.time_budget import LOAD_PARTS, sum_load_breakdowns
from llenergymeasure_harness.backends.vllm_load import load_breakdown

DATA = Path(__file__).parent / "data"

#: run -> (timings.load_s, timings.started_at) from each run's result.json
RUNS = {
    "4340d77f35aaafe8_c1": (114.28793369400002, "2026-12-07 19:16:23.025"),
    "5a84174aa8a37b9e_c1": (60.910432766999975, "2026-12-07 19:20:47.417"),
}


def _marks(run: str) -> tuple[str, float, float, float]:
    """The log and the harness marks the old harness did not log but its lines imply: the
    load started at ``started_at``; ``vllm.LLM`` was imported when vLLM printed its engine
    arguments ("non-default args", whole seconds); the ``LLM(...)`` call is the rest."""
    log = (DATA / f"vllm-0.26.0-h100-load-{run}.log").read_text(encoding="utf-8")
    load_s, started = RUNS[run]
    t0 = datetime.strptime(started, "%Y-%m-%d %H:%M:%S.%f")
    stamp = re.search(r"INFO (\d\d-\d\d \d\d:\d\d:\d\d) \[api_utils", log)
    assert stamp is not None
    t_args = datetime.strptime(f"2026-{stamp.group(1)}", "%Y-%m-%d %H:%M:%S")
    import_s = (t_args - t0).total_seconds()
    return log, load_s, import_s, load_s - import_s


def test_warm_cache_run_splits_into_the_logged_phases() -> None:
    """The 512-seqs run (61 s): 25 s of imports, 22 s of torch.compile (Dynamo 8.84, Inductor
    6.69, the rest 6.58), 6 s of graph capture; the parts sum to load_s."""
    log, load_s, import_s, llm_s = _marks("5a84174aa8a37b9e_c1")
    b = load_breakdown(log, load_s=load_s, import_s=import_s, llm_s=llm_s)
    assert b.python_import_s == pytest.approx(24.583, abs=1e-3)
    assert b.weights_s == pytest.approx(1.977, abs=1e-3)
    assert b.dynamo_transform_s == pytest.approx(8.84)
    assert b.inductor_compile_s == pytest.approx(6.69)
    assert b.compile_other_s == pytest.approx(22.11 - 8.84 - 6.69, abs=1e-3)
    assert b.cuda_graph_capture_s == pytest.approx(6.0)
    assert b.kv_cache_profile_s == pytest.approx(31.22 - 22.11 - 6.0, abs=1e-3)
    assert b.engine_start_s == pytest.approx(llm_s - 1.97694 - 31.22, abs=1e-3)
    assert b.compile_cache_hit is False
    parts = [getattr(b, f"{p}_s") for p in LOAD_PARTS]
    assert all(p is not None and p >= 0 for p in parts)
    assert sum(parts) == pytest.approx(load_s, abs=0.01)


def test_cold_cache_run_shows_model_inspection_in_engine_start() -> None:
    """The 256-seqs run (114 s): engine start holds vLLM's cold model inspection (~27 s),
    torch.compile took 29.68 s, and kv/profile holds the cold kernel warmup (~19 s)."""
    log, load_s, import_s, llm_s = _marks("4340d77f35aaafe8_c1")
    b = load_breakdown(log, load_s=load_s, import_s=import_s, llm_s=llm_s)
    assert b.engine_start_s is not None and 28.0 < b.engine_start_s < 31.0
    assert b.dynamo_transform_s == pytest.approx(11.47)
    assert b.inductor_compile_s == pytest.approx(12.56)
    assert b.compile_other_s == pytest.approx(29.68 - 11.47 - 12.56, abs=1e-3)
    assert b.cuda_graph_capture_s == pytest.approx(5.0)
    assert b.kv_cache_profile_s == pytest.approx(56.97 - 29.68 - 5.0, abs=1e-3)
    assert b.other_s is not None and b.other_s < 0.5


def test_cache_hits_and_missing_lines() -> None:
    """A log where vLLM loaded its compiled graphs says compile_cache_hit; a phase whose line
    is absent is None and its time is left in other_s."""
    log = (
        "(EngineCore pid=7) INFO 12-07 20:00:01 [decorators.py:312] Directly load AOT "
        "compilation from path /c/model\n"
        "(EngineCore pid=7) INFO 12-07 20:00:02 [backends.py:293] Directly load the compiled "
        "graph(s) for compile range (1, 8192) from the cache, took 0.812 s\n"
        "(EngineCore pid=7) INFO 12-07 20:00:02 [monitor.py:53] torch.compile took 2.50 s in "
        "total\n"
    )
    b = load_breakdown(log, load_s=30.0, import_s=20.0, llm_s=9.0)
    assert b.compile_cache_hit is True
    assert b.inductor_compile_s == pytest.approx(0.812)
    assert b.dynamo_transform_s is None and b.weights_s is None and b.engine_start_s is None
    assert b.compile_other_s == pytest.approx(2.5 - 0.812)
    assert b.other_s == pytest.approx(30.0 - 20.0 - 0.812 - (2.5 - 0.812))
    empty = load_breakdown("", load_s=5.0, import_s=None, llm_s=None)
    assert empty.compile_cache_hit is None and empty.other_s == 5.0


def test_tensor_parallel_ranks_count_the_slowest() -> None:
    """Two ranks load side by side: each phase is the slower rank's, not the sum."""
    log = (
        "(Worker_TP0 pid=1) INFO [m.py:1] Model loading took 7.5 GiB and 2.0 seconds\n"
        "(Worker_TP1 pid=2) INFO [m.py:1] Model loading took 7.5 GiB and 3.0 seconds\n"
        "(Worker_TP0 pid=1) INFO [b.py:1] Compiling a graph for compile range (1, 8192) "
        "takes 4.00 s\n"
        "(Worker_TP1 pid=2) INFO [b.py:1] Compiling a graph for compile range (1, 8192) "
        "takes 5.00 s\n"
    )
    b = load_breakdown(log, load_s=20.0, import_s=None, llm_s=None)
    assert b.weights_s == 3.0 and b.inductor_compile_s == 5.0


def test_study_sums_each_load_part_over_runs() -> None:
    """The study's load_breakdown_s adds each part over the runs that reported one; None
    when none did."""
    t = Timings(
        started_at="x",
        ended_at="y",
        load_breakdown_s=LoadBreakdown(python_import_s=1.5, weights_s=2.0, other_s=0.25),
    )
    bare = Timings(started_at="x", ended_at="y")
    assert sum_load_breakdowns([t, t, bare]) == {
        "python_import": 3.0,
        "weights": 4.0,
        "other": 0.5,
    }
    assert sum_load_breakdowns([bare]) is None
