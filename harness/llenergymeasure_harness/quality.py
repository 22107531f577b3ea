"""Quality flags: reasons to be careful with a result, stored in ``result.quality_flags``.

Thresholds and why:

* ``short_run`` — the NVML energy counter updates about every 100 ms, so a window shorter than
  ``SHORT_RUN_FACTOR`` (10) update periods has more than ~10 % quantisation error.
* ``thermal_throttle`` / ``power_throttle`` — a thermal or power clock-event reason was seen in
  a sample during the measured window, or the violation counters advanced over it.
* ``persistence_off`` — with persistence mode off the driver may unload between runs and the
  first run pays initialisation (and the energy counter restarts).
* ``other_processes`` — another process had a compute context on a measured GPU: its energy is
  in our counter.
* ``energy_mismatch`` — the counter and the integrated power samples disagree by more than
  ``MISMATCH_PCT`` (10 %). Some gap is expected (power samples are 10 Hz, the counter is exact),
  a large one means one of them is wrong.
* ``no_energy`` — energy was not measured (no NVML/GPU); energy fields are None.
* ``prefix_cache_hits`` — measured prompts were served partly from the engine's prefix cache
  although the experiment did not ask for prefix caching (``vllm.enable_prefix_caching`` left
  at vLLM's default, which is on): those prefills were skipped, so energy per token is lower
  than the workload's. Warmup prompts share no prefix with measured ones by construction, so
  hits come from the dataset itself (repeated prompts, a shared system prompt). Set
  ``enable_prefix_caching: true`` to measure with the cache on purpose, ``false`` to measure
  every prefill.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from llenergymeasure_harness.energy.nvml import POWER_REASONS, THERMAL_REASONS

COUNTER_UPDATE_PERIOD_S = 0.1
SHORT_RUN_FACTOR = 10
MISMATCH_PCT = 10.0


def _flag(code: str, message: str, severity: str = "warning") -> dict[str, str]:
    return {"code": code, "severity": severity, "message": message}


def quality_flags(
    *,
    energy_measured: bool,
    duration_s: float,
    samples: Iterable[dict[str, Any]] = (),
    violation_ns: dict[int, dict[str, int]] | None = None,
    persistence: dict[int, bool | None] | None = None,
    pids: dict[int, list[int] | None] | None = None,
    own_pid: int | None = None,
    in_container: bool = False,
    mismatch_pct: float | None = None,
    warmup_converged: bool | None = None,
    baseline_source: str | None = None,
    cached_input_tokens: int | None = None,
    input_tokens: int = 0,
    prefix_caching_requested: bool | None = None,
) -> list[dict[str, str]]:
    """All flags that apply (fields of ``QualityFlag``)."""
    flags: list[dict[str, str]] = []
    if not energy_measured:
        flags.append(_flag("no_energy", "energy was not measured (no NVML/GPU); fields are None"))
    if duration_s < SHORT_RUN_FACTOR * COUNTER_UPDATE_PERIOD_S:
        flags.append(
            _flag(
                "short_run",
                f"measured window {duration_s:.3f} s is under {SHORT_RUN_FACTOR}x the "
                f"~{COUNTER_UPDATE_PERIOD_S * 1000:.0f} ms energy-counter update period; "
                "use more prompts",
            )
        )
    thermal = power = 0
    n = 0
    for s in samples:
        r = s.get("clock_event_reasons")
        if r is None:
            continue
        n += 1
        thermal += bool(r & THERMAL_REASONS)
        power += bool(r & POWER_REASONS)
    v_thermal = sum(v.get("thermal", 0) for v in (violation_ns or {}).values())
    v_power = sum(v.get("power", 0) for v in (violation_ns or {}).values())
    if thermal or v_thermal:
        flags.append(
            _flag(
                "thermal_throttle",
                f"thermal slowdown in {thermal}/{n} samples, "
                f"{v_thermal / 1e6:.1f} ms thermal violation time",
            )
        )
    if power or v_power:
        flags.append(
            _flag(
                "power_throttle",
                f"power cap/brake in {power}/{n} samples, "
                f"{v_power / 1e6:.1f} ms power violation time",
            )
        )
    off = [g for g, on in (persistence or {}).items() if on is False]
    if off:
        flags.append(_flag("persistence_off", f"persistence mode is off on GPU(s) {off}"))
    own = os.getpid() if own_pid is None else own_pid
    others: dict[int, list[int]] = {}
    for g, plist in (pids or {}).items():
        if plist is None:
            continue
        foreign = [p for p in plist if p != own]
        # In a container our own process shows under its host pid, so only >1 means others.
        if (in_container and len(plist) > 1) or (not in_container and foreign):
            others[g] = foreign
    if others:
        flags.append(
            _flag("other_processes", f"other processes on measured GPUs (gpu: pids): {others}")
        )
    if mismatch_pct is not None and abs(mismatch_pct) > MISMATCH_PCT:
        flags.append(
            _flag(
                "energy_mismatch",
                f"energy counter and integrated power differ by {mismatch_pct:+.1f} % "
                f"(threshold {MISMATCH_PCT:.0f} %)",
            )
        )
    if warmup_converged is False:
        flags.append(_flag("warmup_not_converged", "warmup hit max_batches before converging"))
    if cached_input_tokens and prefix_caching_requested is not True:
        share = cached_input_tokens / input_tokens if input_tokens else 0.0
        flags.append(
            _flag(
                "prefix_cache_hits",
                f"{cached_input_tokens} of {input_tokens} measured prompt tokens "
                f"({share:.1%}) came from the prefix cache, which the experiment did not ask "
                "for; set vllm.enable_prefix_caching to true (measure with it) or false",
            )
        )
    if baseline_source == "cache":
        flags.append(_flag("baseline_cached", "idle baseline reused from the cache", "info"))
    return flags
