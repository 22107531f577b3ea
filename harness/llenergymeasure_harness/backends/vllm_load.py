"""Where a vLLM load's seconds go: :func:`load_breakdown` from the harness's own marks and the
durations vLLM logs while its engine starts (vLLM 0.26.0 and 0.33.0 log the same lines).

::

    load() ──► import vllm, vllm.LLM ──► LLM(**engine_args) ─────────────────────────────► end
               python_import_s           │ engine_start_s │ weights_s │ init engine X s   │
                                                                        ├ torch.compile C s
                                                                        │  ├ dynamo_transform_s
                                                                        │  ├ inductor_compile_s
                                                                        │  └ compile_other_s
                                                                        ├ cuda_graph_capture_s
                                                                        └ kv_cache_profile_s
    other_s: what load_s leaves over (the dummy-model folder, engine arguments)

The lines, as vLLM writes them (the engine core's are prefixed ``(EngineCore pid=N)``)::

    Model loading took 15.0 GiB and 1.976940 seconds                       -> weights_s
    Dynamo bytecode transform time: 8.84 s                                 -> dynamo_transform_s
    Compiling a graph for compile range (1, 8192) takes 6.69 s             -> inductor_compile_s
    Directly load the compiled graph(s) for compile range ... took 0.8 s   -> (the same, a hit)
    Directly load AOT compilation from path ...                            -> compile_cache_hit
    torch.compile took 22.11 s in total                                    -> C
    Graph capturing finished in 6 secs, took 0.98 GiB                      -> cuda_graph_capture_s
    init engine (profile, create kv cache, warmup model) took 31.22 s (compilation: 22.11 s)

``engine_start_s`` is the ``LLM(...)`` call less the weights and the init-engine span: engine
arguments, model-config resolution (vLLM inspects the architecture in a subprocess when its
``modelinfos`` cache is cold), the engine-core process, NCCL and worker set-up, and the front
end's own set-up after the engine is up. ``compile_other_s`` is torch.compile's total less the
Dynamo and Inductor times (graph splitting, saving the AOT artefact), and
``kv_cache_profile_s`` the init-engine span less compilation and graph capture (the profile
run, KV-cache allocation and vLLM's kernel warmup). With several ranks (tensor parallel) each
rank logs its own lines; the slowest rank counts, as the ranks run side by side. Graph capture
is logged in whole seconds. A phase whose line is missing (vLLM's logging off, another
release's wording) is None, and its time stays in ``other_s`` or ``engine_start_s``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from llenergymeasure_contract.results import LoadBreakdown

#: A marker no load can finish without (the init-engine line); the backend waits for it.
INIT_ENGINE_MARK = "init engine (profile, create kv cache, warmup model) took"

_NUM = r"(\d+(?:\.\d+)?)"
_PROCESS = re.compile(r"^\((?P<proc>[^)]*?pid=\d+)\)")
_WEIGHTS = re.compile(r"Model loading took .*? and " + _NUM + r" seconds")
_DYNAMO = re.compile(r"Dynamo bytecode transform time: " + _NUM + r" s")
_COMPILED = re.compile(r"Compiling a graph for .*? takes " + _NUM + r" s")
_LOADED = re.compile(r"Directly load the compiled graph\(s\) for .*? took " + _NUM + r" s")
_AOT_LOADED = re.compile(r"Directly load AOT compil")
_COMPILE_TOTAL = re.compile(r"torch\.compile took " + _NUM + r" s in total")
_CAPTURE = re.compile(r"Graph capturing finished in " + _NUM + r" secs")
_INIT = re.compile(
    re.escape(INIT_ENGINE_MARK) + r" " + _NUM + r" s(?: \(compilation: " + _NUM + r" s)?"
)


class _Lines:
    """The values of one pattern, per process (``(EngineCore pid=N)``, or the front end)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = [(self._proc(line), line) for line in lines]

    @staticmethod
    def _proc(line: str) -> str:
        match = _PROCESS.match(line.strip())
        return match.group("proc") if match else ""

    def per_process(self, pattern: re.Pattern[str], group: int = 1) -> dict[str, list[float]]:
        found: dict[str, list[float]] = {}
        for proc, line in self._lines:
            match = pattern.search(line)
            if match and match.group(group) is not None:
                found.setdefault(proc, []).append(float(match.group(group)))
        return found

    def first(self, pattern: re.Pattern[str], group: int = 1) -> float | None:
        """The slowest process's first value (ranks run side by side)."""
        values = [v[0] for v in self.per_process(pattern, group).values()]
        return max(values) if values else None

    def summed(self, pattern: re.Pattern[str]) -> float | None:
        """The slowest process's sum (one line per compiled graph)."""
        values = [sum(v) for v in self.per_process(pattern).values()]
        return max(values) if values else None

    def seen(self, pattern: re.Pattern[str]) -> bool:
        return any(pattern.search(line) for _proc, line in self._lines)


def _rest(total: float | None, *parts: float | None) -> float | None:
    """``total`` less the known parts, never negative; None without a total."""
    if total is None:
        return None
    return max(0.0, total - sum(p for p in parts if p is not None))


def load_breakdown(
    log: str, *, load_s: float, import_s: float | None, llm_s: float | None
) -> LoadBreakdown:
    """The parts of one vLLM load.

    Args:
        log: What the engine wrote while loading (stdout and stderr, any order of processes).
        load_s: The whole load, as the harness timed it.
        import_s: Load start until ``vllm.LLM`` was importable (None: not timed).
        llm_s: The ``vllm.LLM(...)`` call (None: not timed).
    """
    lines = _Lines(log.replace("\r", "\n").splitlines())
    weights = lines.first(_WEIGHTS)
    dynamo = lines.first(_DYNAMO)
    compiled = lines.summed(_COMPILED)
    loaded = lines.summed(_LOADED)
    inductor = None if compiled is None and loaded is None else (compiled or 0.0) + (loaded or 0.0)
    compile_total = lines.first(_COMPILE_TOTAL)
    init = lines.first(_INIT)
    init_compile = lines.first(_INIT, group=2)
    capture = lines.first(_CAPTURE)
    hit: bool | None = None
    if lines.seen(_AOT_LOADED) or loaded is not None:
        hit = True
    elif compiled is not None:
        hit = False
    compile_other = _rest(compile_total, dynamo, inductor)
    compile_in_init = init_compile if init_compile is not None else compile_total
    kv_profile = _rest(init, compile_in_init, capture)
    engine_start = _rest(llm_s, weights, init) if weights is not None and init else None
    parts = {
        "python_import_s": import_s,
        "engine_start_s": engine_start,
        "weights_s": weights,
        "dynamo_transform_s": dynamo,
        "inductor_compile_s": inductor,
        "compile_other_s": compile_other,
        "cuda_graph_capture_s": capture,
        "kv_cache_profile_s": kv_profile,
    }
    rounded = {k: None if v is None else round(v, 3) for k, v in parts.items()}
    other = _rest(load_s, *parts.values())
    return LoadBreakdown(
        **rounded,
        other_s=None if other is None else round(other, 3),
        compile_cache_hit=hit,
    )


__all__ = ["INIT_ENGINE_MARK", "load_breakdown"]
