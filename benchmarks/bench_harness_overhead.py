"""Harness overhead on a GPU: what NVML sampling and per-step timestamps cost a generate loop.

Two modes:

``probe``
    Self-contained (torch, transformers, pynvml only). Times every NVML call the sampler could
    make, idle and beside a running ``generate``, then runs batch-64 ``generate`` windows with a
    10 Hz sampler thread that makes ONE kind of call, for each kind, alternating with windows
    that sample nothing. This is how the sampler design was chosen (docs/gpu-results.md).

``overhead`` (default)
    The acceptance benchmark: the same batch-64 generate loop with the full harness measurement
    on (energy-counter window edges + the harness sampler at 10 Hz + per-step token timestamps)
    against everything off, alternating windows, medians. Prints the ratio; it must be >= 0.99.

Example:
    python benchmarks/bench_harness_overhead.py overhead --rounds 6 --json $OUT/overhead.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "head_dim": 128,
}


# --- model + generate


def build_model(dtype_name: str = "bfloat16") -> Any:
    """Llama-3.1-8B with random weights built directly on the GPU (no download, about 1 s)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**{k: v for k, v in LLAMA_31_8B.items() if k != "model_type"})
    dtype = getattr(torch, dtype_name)
    t0 = time.perf_counter()
    with torch.device("cuda"):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        except TypeError:
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    model.eval()
    torch.cuda.synchronize()
    print(f"built model in {time.perf_counter() - t0:.1f} s", flush=True)
    return model


def make_inputs(batch: int, input_len: int, seed: int = 0) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 120000, (batch, input_len), generator=g).cuda()
    return ids, torch.ones_like(ids)


def generate_once(model: Any, ids: Any, mask: Any, out_len: int, callback: Any = None) -> float:
    """One greedy generate of exactly ``out_len`` tokens; returns seconds (synchronised)."""
    import torch

    kwargs: dict[str, Any] = {}
    if callback is not None:
        kwargs["stopping_criteria"] = callback
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=out_len,
            min_new_tokens=out_len,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
    torch.cuda.synchronize()
    return time.perf_counter() - t0


# --- probe: NVML call costs


def _nvml_calls(pynvml: Any, h: Any) -> dict[str, Any]:
    fi = pynvml.NVML_FI_DEV_POWER_INSTANT
    return {
        "energy_counter": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        "energy_field83": lambda: pynvml.nvmlDeviceGetFieldValues(
            h, [pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION]
        ),
        "power_usage": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        "power_instant_fv": lambda: pynvml.nvmlDeviceGetFieldValues(h, [fi]),
        "power_fv_batch": lambda: pynvml.nvmlDeviceGetFieldValues(
            h, [fi, pynvml.NVML_FI_DEV_POWER_AVERAGE]
        ),
        "temperature": lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        "clock_sm": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        "clock_mem": lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        "clock_reasons": lambda: pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
        "violation_fv": lambda: pynvml.nvmlDeviceGetFieldValues(
            h,
            [
                pynvml.NVML_FI_DEV_PERF_POLICY_POWER,
                pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL,
            ],
        ),
        "memory_info": lambda: pynvml.nvmlDeviceGetMemoryInfo(h),
        "utilization": lambda: pynvml.nvmlDeviceGetUtilizationRates(h),
        "processes": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
    }


def time_calls(calls: dict[str, Any], n: int = 20) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, fn in calls.items():
        ts: list[float] = []
        err = None
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # report unsupported calls rather than stop the probe
                err = repr(exc)
                break
            ts.append(time.perf_counter() - t0)
        if err:
            out[name] = {"error": err}  # type: ignore[dict-item]
        else:
            out[name] = {
                "median_us": statistics.median(ts) * 1e6,
                "max_us": max(ts) * 1e6,
                "mean_us": statistics.fmean(ts) * 1e6,
            }
    return out


class _ProbeSampler:
    """A 10 Hz thread (or process) making the named NVML calls; records each call's duration."""

    def __init__(self, names: list[str], rate_hz: float = 10.0, counter_every: int = 1) -> None:
        self.names = names
        self.period = 1.0 / rate_hz
        self.counter_every = counter_every
        self._stop = threading.Event()
        self.durations: dict[str, list[float]] = {n: [] for n in names}
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        import pynvml

        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        calls = _nvml_calls(pynvml, h)
        tick = 0
        nxt = time.perf_counter()
        while not self._stop.is_set():
            for name in self.names:
                if name == "energy_counter" and tick % self.counter_every:
                    continue
                t0 = time.perf_counter()
                calls[name]()
                self.durations[name].append(time.perf_counter() - t0)
            tick += 1
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.perf_counter()))

    def __enter__(self) -> _ProbeSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def _proc_sampler_main(names: list[str], stop: Any) -> None:
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    calls = _nvml_calls(pynvml, h)
    nxt = time.perf_counter()
    while not stop.is_set():
        for name in names:
            calls[name]()
        nxt += 0.1
        stop.wait(max(0.0, nxt - time.perf_counter()))


def probe(args: argparse.Namespace) -> dict[str, Any]:
    import pynvml
    import torch

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    report: dict[str, Any] = {
        "device": pynvml.nvmlDeviceGetName(h),
        "driver": pynvml.nvmlSystemGetDriverVersion(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "switchinterval_s": sys.getswitchinterval(),
    }
    report["call_cost_idle_no_context"] = time_calls(_nvml_calls(pynvml, h))
    model = build_model()
    ids, mask = make_inputs(args.batch, args.input_len)
    report["call_cost_idle_model_loaded"] = time_calls(_nvml_calls(pynvml, h))
    for _ in range(2):
        generate_once(model, ids, mask, args.output_len)  # warmup with the measured shapes

    # Call cost while generate runs (measured in a side thread).
    box: dict[str, Any] = {}

    def side() -> None:
        time.sleep(1.0)
        box["r"] = time_calls(_nvml_calls(pynvml, h), n=10)

    th = threading.Thread(target=side)
    th.start()
    generate_once(model, ids, mask, args.output_len)
    th.join()
    report["call_cost_under_generate"] = box["r"]
    print(json.dumps(report, indent=1), flush=True)

    singles = [
        "power_usage",
        "power_instant_fv",
        "temperature",
        "clock_sm",
        "clock_reasons",
        "memory_info",
        "utilization",
        "energy_counter",
        "energy_field83",
        "violation_fv",
    ]
    cheap = [
        "power_instant_fv",
        "temperature",
        "clock_sm",
        "clock_mem",
        "clock_reasons",
        "memory_info",
        "utilization",
    ]
    variants: dict[str, Any] = {"off": None}
    for s in singles:
        variants[f"thread:{s}"] = ([s], 1)
    variants["thread:all_but_counter"] = (cheap, 1)
    variants["thread:all+counter_10hz"] = ([*cheap, "energy_counter"], 1)
    variants["thread:all+counter_1hz"] = ([*cheap, "energy_counter"], 10)
    variants["process:all+counter_10hz"] = "proc"
    times: dict[str, list[float]] = {k: [] for k in variants}
    durs: dict[str, dict[str, float]] = {}
    ctx = mp.get_context("spawn")
    for r in range(args.rounds):
        for name, spec in variants.items():
            if spec is None:
                dt = generate_once(model, ids, mask, args.output_len)
            elif spec == "proc":
                stop = ctx.Event()
                p = ctx.Process(target=_proc_sampler_main, args=([*cheap, "energy_counter"], stop))
                p.start()
                time.sleep(1.0)  # let the child import and init NVML
                dt = generate_once(model, ids, mask, args.output_len)
                stop.set()
                p.join()
            else:
                s = _ProbeSampler(spec[0], counter_every=spec[1])
                with s:
                    dt = generate_once(model, ids, mask, args.output_len)
                if r == 0:
                    durs[name] = {
                        k: statistics.median(v) * 1e6 for k, v in s.durations.items() if v
                    }
            times[name].append(args.batch * args.output_len / dt)
        print(f"round {r}: " + ", ".join(f"{k}={v[-1]:.0f}" for k, v in times.items()), flush=True)
    base = statistics.median(times["off"])
    report["throughput_tok_s"] = {k: statistics.median(v) for k, v in times.items()}
    report["throughput_all_windows"] = times
    report["ratio_vs_off"] = {k: statistics.median(v) / base for k, v in times.items()}
    report["sampler_call_median_us_under_generate"] = durs
    print(json.dumps({"ratio_vs_off": report["ratio_vs_off"]}, indent=1), flush=True)
    return report


# --- overhead: harness on/off


def _steal_jiffies() -> tuple[int, int]:
    """(steal, total) jiffies over all CPUs from /proc/stat (VM CPU time taken by the host)."""
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return 0, 0
    return (f[7] if len(f) > 7 else 0), sum(f)


def _bootstrap_ci(
    on: list[float], off: list[float], n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % bootstrap interval of median(on)/median(off), resampling each side."""
    import random

    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(on, k=len(on)))
        / statistics.median(rng.choices(off, k=len(off)))
        for _ in range(n)
    )
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def _rate_fit(
    med: dict[str, float], base_rate_hz: float, detail: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Least-squares slope of throughput loss vs sampler rate, through (0 Hz, no loss).

    Amplification: the per-tick cost is invisible at 10 Hz beside window-to-window noise, so
    the sampler also runs at 100 and 1000 Hz; loss per Hz times 10 is the 10 Hz cost.
    """
    if "off" not in med:
        return None
    pts = []
    for v, m in med.items():
        base, _, rate = v.partition("@")
        if base == "on":
            # The achieved rate (samples per second), which falls short of the asked one when
            # a tick takes longer than the period.
            eff = [w["samples"] / w["wall_s"] for w in detail if w["variant"] == v and w["samples"]]
            r_hz = statistics.median(eff) if eff else float(rate or base_rate_hz)
            pts.append((r_hz, 1.0 - m / med["off"]))
    if len(pts) < 2:
        return None
    slope = sum(r * loss for r, loss in pts) / sum(r * r for r, _ in pts)
    return {
        "points_rate_hz_loss": pts,
        "loss_per_hz": slope,
        "predicted_loss_at_base_rate": slope * base_rate_hz,
    }


def _thread_usage() -> tuple[float, int]:
    """(CPU seconds, involuntary context switches) of the calling thread."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_THREAD)
    return ru.ru_utime + ru.ru_stime, ru.ru_nivcsw


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Full harness measurement on vs off, alternating windows (see module docstring).

    Variants: ``off`` (plain generate), ``on`` (counter window edges + harness sampler at
    ``--rate-hz`` + per-step CUDA-event timestamps), and for attribution ``sampler`` (sampler
    thread only) and ``stamps`` (timestamps only). Order rotates every round.
    """
    import gc

    import torch

    from llenergymeasure_harness.backends.pytorch import StepTimestamper, _criteria
    from llenergymeasure_harness.energy import NvmlEnergyMeter, make_sampler
    from llenergymeasure_harness.energy.nvml import RealNvml

    nvml = RealNvml()
    model = build_model()
    ids, mask = make_inputs(args.batch, args.input_len)
    for _ in range(3):
        generate_once(model, ids, mask, args.output_len)
    meter = NvmlEnergyMeter(nvml, [0])
    variants = [v for v in args.variants.split(",") if v]
    tok_s: dict[str, list[float]] = {v: [] for v in variants}
    detail: list[dict[str, Any]] = []
    n_tok = args.batch * args.output_len
    for r in range(args.rounds):
        # ABBA...: rotate the start every round and reverse every other round, so no variant
        # is always first or always follows the same one.
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        if (r // len(variants)) % 2:
            order = order[::-1]
        for v in order:
            gc.collect()
            sampler = None
            stamper = None
            base, _, rate = v.partition("@")  # "on@100": full measurement, sampler at 100 Hz
            if base in ("on", "sampler"):
                sampler = make_sampler(
                    "nvml",
                    nvml=nvml,
                    gpus=[0],
                    labels=[0],
                    rate_hz=float(rate) if rate else args.rate_hz,
                )
                sampler.start()
            crit = None
            if base in ("on", "stamps"):
                calls = int(rate) if base == "stamps" and rate else 1
                stamper = StepTimestamper(
                    torch.device("cuda:0"), expected_steps=args.output_len * calls
                )
                crit = _criteria(stamper)
                if base == "stamps" and rate:  # "stamps@100": 100 timestamp calls per step
                    # Distinct objects: generate() drops a criterion already in its list.
                    crit = type(crit)([c for _ in range(int(rate)) for c in _criteria(stamper)])
            cpu0, ivcs0 = _thread_usage()
            st0, tot0 = _steal_jiffies()
            win = None
            if base == "on":
                meter.begin_window("bench", torch.cuda.synchronize)
            dt = generate_once(
                model,
                ids,
                mask,
                args.output_len,
                callback=crit,
            )
            if base == "on":
                win = meter.end_window("bench", torch.cuda.synchronize)
            cpu1, ivcs1 = _thread_usage()
            st1, tot1 = _steal_jiffies()
            if stamper is not None:
                stamper.finish()
            if sampler is not None:
                sampler.stop()
            tok_s[v].append(n_tok / dt)
            detail.append(
                {
                    "round": r,
                    "variant": v,
                    "tok_s": n_tok / dt,
                    "wall_s": dt,
                    "main_thread_cpu_s": cpu1 - cpu0,
                    "involuntary_ctx_switches": ivcs1 - ivcs0,
                    "steal_pct": 100.0 * (st1 - st0) / max(1, tot1 - tot0),
                    "sampler_thread_cpu_s": None if sampler is None else sampler.cpu_s,
                    "energy_j": None if win is None else win.gpu_energy_j,
                    "samples": None if sampler is None else len(sampler.rows()),
                    "steps": None if stamper is None else len(stamper.step_times_s),
                }
            )
        print(
            f"round {r}: " + ", ".join(f"{v}={tok_s[v][-1]:.1f}" for v in variants),
            flush=True,
        )
    med = {v: statistics.median(x) for v, x in tok_s.items()}
    ratio = med["on"] / med["off"] if "on" in med and "off" in med else None
    # Paired per-round ratios: robust to slow drift (clock/thermal) across the run.
    paired = (
        [a / b for a, b in zip(tok_s["on"], tok_s["off"], strict=True)] if ratio is not None else []
    )
    stamps_fit = None
    for v, m in med.items():
        base, _, rate = v.partition("@")
        if base == "stamps" and rate and "off" in med:
            loss = 1.0 - m / med["off"]
            stamps_fit = {
                "calls_per_step": int(rate),
                "loss": loss,
                "loss_per_call": loss / int(rate),
            }
    report = {
        "stamps_fit": stamps_fit,
        "device": nvml.device_name(0),
        "driver": nvml.driver_version(),
        "batch": args.batch,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rate_hz": args.rate_hz,
        "rounds": args.rounds,
        "tok_s": tok_s,
        "median_tok_s": med,
        "ratio_vs_off": {v: med[v] / med["off"] for v in med} if "off" in med else {},
        "ratio": ratio,
        "paired_ratio_median": statistics.median(paired) if paired else None,
        "ratio_ci95": _bootstrap_ci(tok_s["on"], tok_s["off"]) if ratio is not None else None,
        "sampler_thread_cpu_s_per_s": (
            statistics.median(
                w["sampler_thread_cpu_s"] / w["wall_s"]
                for w in detail
                if w["sampler_thread_cpu_s"] is not None
            )
            if any(w["sampler_thread_cpu_s"] is not None for w in detail)
            else None
        ),
        "rate_fit": _rate_fit(med, args.rate_hz, detail),
        "windows": detail,
        "pass": ratio is not None and ratio >= 0.99,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "windows"}, indent=1), flush=True)
    nvml.shutdown()
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", nargs="?", default="overhead", choices=["overhead", "probe"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--rate-hz", type=float, default=10.0)
    p.add_argument("--variants", default="off,on")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    report = probe(args) if args.mode == "probe" else overhead(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if report.get("pass", True) else 1


if __name__ == "__main__":
    sys.exit(main())
