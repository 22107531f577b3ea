"""What the engine reports about its LoRA adapters over the measured window (fakes for vLLM)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.harness.conftest import endpoint_lora_config

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.contract import HarnessEnv
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.experiment import Deps, run_experiment
from llenergymeasure_harness.lora import (
    COUNT_NAMES,
    LORA_GAUGE,
    VLLM_NO_LOAD_COUNTS,
    GaugeProbe,
    LabelSet,
    gauge_window_counts,
    parse_lora_gauge,
)
from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
from llenergymeasure_harness.testing.fake_nvml import FakeNvml
from llenergymeasure_harness.testing.vllm_metrics import LoraGauge, go_float

#: ``GET /metrics`` of a real vLLM server with two adapters (v0.29.0 on CPU, one request in
#: flight), with the HELP/TYPE lines vLLM 0.26.0's PrometheusStatLogger registers and
#: neighbouring metrics in their real form.
REAL_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-360m"} 1.0
# HELP vllm:lora_requests_info Running stats on lora requests.
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="2",running_lora_adapters="alpaca",waiting_lora_adapters="alpaca"} 1.789828498802105e+09
vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""} 1.789828499102105e+09
vllm:lora_requests_info_created{max_lora="2"} 1.7898284e+09
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-360m"} 0.0
"""  # noqa: E501  # a real exposition line is one line


def _series(running: str, waiting: str | None = None, max_lora: str = "4") -> LabelSet:
    waiting = running if waiting is None else waiting
    return (
        ("max_lora", max_lora),
        ("running_lora_adapters", running),
        ("waiting_lora_adapters", waiting),
    )


def test_parser_reads_a_real_vllm_metrics_sample() -> None:
    """Only the vllm:lora_requests_info samples are kept, label set -> value, other metrics and
    the _created series aside."""
    series = parse_lora_gauge(REAL_METRICS)
    assert series == {
        _series("alpaca", max_lora="2"): 1.789828498802105e09,
        _series("", max_lora="2"): 1.789828499102105e09,
    }


def test_parser_undoes_escapes_and_takes_labels_in_any_order() -> None:
    """Escaped label values come back as written; label order does not matter."""
    text = (
        'vllm:lora_requests_info{waiting_lora_adapters="a\\"b",max_lora="1",'
        'running_lora_adapters="x\\\\y"} 12.5\n'
        "vllm:lora_requests_info{max_lora=broken} 1\n"
    )
    assert parse_lora_gauge(text) == {_series("x\\y", 'a"b', max_lora="1"): 12.5}


def test_fake_gauge_writes_what_prometheus_client_writes() -> None:
    """The fakes' exposition uses prometheus_client's float format and parses back."""
    assert go_float(1789828498.802105) == "1.789828498802105e+09"
    assert go_float(12.5) == "12.5"
    now = iter([1789828498.802105, 1789828499.0])
    gauge = LoraGauge(2, clock=lambda: next(now))
    gauge.record(["alpaca", "alpaca"])
    gauge.record([])
    assert gauge.exposition().splitlines()[2] == REAL_METRICS.splitlines()[5]
    assert parse_lora_gauge(gauge.exposition()) == {
        _series("alpaca", max_lora="2"): 1789828498.802105,
        _series("", max_lora="2"): 1789828499.0,
    }


def test_window_counts_keep_only_the_label_sets_updated_in_between() -> None:
    """Series whose value changed (or that appeared) between the reads are the window's engine
    steps: the most adapters listed at one step; unchanged series (warmup's) do not count."""
    before = {_series("a,b,c"): 100.0, _series("a"): 101.0}
    after = {_series("a,b,c"): 100.0, _series("a"): 205.0, _series("a,b"): 204.0}
    counts = gauge_window_counts(before, after, "GET /metrics")
    assert (counts.max_adapters_running, counts.max_adapters_waiting) == (2, 2)
    assert counts.adapter_loads is None and counts.adapter_swaps is None
    assert counts.provenance["adapter_loads"] == VLLM_NO_LOAD_COUNTS
    assert "running_lora_adapters, GET /metrics" in counts.provenance["max_adapters_running"]
    assert "2 label set(s)" in counts.provenance["max_adapters_running"]

    idle = gauge_window_counts(before, before, "GET /metrics")
    assert idle.max_adapters_running is None
    assert "no engine step updated" in idle.provenance["max_adapters_running"]
    empty = gauge_window_counts({}, {}, "GET /metrics")
    assert f"carries no {LORA_GAUGE} series" in empty.provenance["max_adapters_waiting"]
    assert set(empty.provenance) == set(COUNT_NAMES)


def test_a_failed_read_leaves_the_counts_none_with_the_error() -> None:
    """A probe whose read fails gives None counts, the error as their reason; no exception."""

    def read() -> dict[LabelSet, float]:
        raise ConnectionError("refused")

    probe = GaugeProbe(read, "GET /metrics of the endpoint")
    probe.begin()
    counts = probe.end()
    assert counts.max_adapters_running is None
    reason = counts.provenance["max_adapters_running"]
    assert reason == "could not read GET /metrics of the endpoint: ConnectionError: refused"


# --------------------------------------------------------------------------- whole runs


def _config(**overrides: Any) -> ExperimentConfig:
    base: dict[str, Any] = {
        "model": "tiny-llama",
        "load_format": "dummy",
        "backend": "vllm",
        "n_prompts": 12,
        "max_input_tokens": 8,
        "max_output_tokens": 5,
        "lora": {"adapters": [{"generate": {"count": 3, "rank": 8}}]},
        "baseline": {"enabled": False},
        "energy": {"sampler": "nvml", "timeseries": False},
    }
    base.update(overrides)
    return ExperimentConfig(**base)


def _run_in_process(cfg: ExperimentConfig, tmp_path: Path) -> Any:
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.05))
    clock = fake.behaviour.clock
    env = HarnessEnv(config=cfg, run_id="lora", results_dir=str(tmp_path))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        return run_experiment(env, deps)


def test_in_process_vllm_leaves_the_counts_none_with_stats_off(tmp_path: Path) -> None:
    """The offline engine runs without stat logging (llem keeps vLLM's default), so every count
    is None and result.json says why."""
    lora = _run_in_process(_config(), tmp_path).lora
    assert lora is not None
    assert [getattr(lora, n) for n in COUNT_NAMES] == [None] * 4
    assert "disable_log_stats" in lora.counts_provenance["max_adapters_running"]
    assert lora.counts_provenance["adapter_swaps"] == VLLM_NO_LOAD_COUNTS


def test_in_process_vllm_reads_the_gauge_with_stats_on(tmp_path: Path) -> None:
    """With vllm.engine_args.disable_log_stats: false, LLM.get_metrics() gives the adapters the
    engine had in flight: all three (offline, every request is submitted at once)."""
    cfg = _config(vllm={"engine_args": {"disable_log_stats": False}})
    lora = _run_in_process(cfg, tmp_path).lora
    assert lora is not None
    assert (lora.max_adapters_running, lora.max_adapters_waiting) == (3, 3)
    assert lora.adapter_loads is None and lora.adapter_swaps is None
    assert "LLM.get_metrics()" in lora.counts_provenance["max_adapters_running"]


class _LoraServeProcess:
    """Stands in for ManagedServer: the fake SSE server serving the --lora-modules names."""

    launched: ClassVar[list[_LoraServeProcess]] = []

    def __init__(self, argv: list[str], *, port: int, log_path: Path, **_: Any) -> None:
        from llenergymeasure_harness.testing.fake_sse_server import (
            FakeSSEBehaviour,
            FakeSSEServer,
        )

        i = argv.index("--lora-modules") + 1
        names = []
        while i < len(argv) and "=" in argv[i]:
            names.append(argv[i].split("=", 1)[0])
            i += 1
        max_loras = int(argv[argv.index("--max-loras") + 1])
        behaviour = FakeSSEBehaviour(
            model="tiny-llama",
            lora_models=tuple(names),
            max_loras=max_loras,
            token_delay_s=0.002,
        )
        self.fake = FakeSSEServer(behaviour)
        log_path.write_text("", encoding="utf-8")
        _LoraServeProcess.launched.append(self)

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def start(self) -> None:
        self.fake.start()

    def wait_healthy(self, timeout_s: float) -> float:
        return 0.01

    def stop(self, grace_s: float = 0.0) -> int:
        self.fake.stop()
        return 0


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None, reason="needs aiohttp")
def test_vllm_serve_counts_come_from_its_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Server mode reads vllm:lora_requests_info from GET /metrics before and after the
    measured window: both adapters were in flight at once, and result.json says where from."""
    from llenergymeasure_harness.serving import backends as serving_backends

    _LoraServeProcess.launched = []
    monkeypatch.setattr(serving_backends, "ManagedServer", _LoraServeProcess)
    cfg = _config(
        server={},
        n_prompts=8,
        lora={"adapters": [{"generate": {"count": 2, "rank": 8}}], "max_loras": 2},
    )
    env = HarnessEnv(config=cfg, run_id="served", results_dir=str(tmp_path))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=time.perf_counter, power_w=300.0),
        make_backend=lambda name: serving_backends.ServerBackend(),
        cuda_visible=None,
    )
    result = run_experiment(env, deps)
    lora = result.lora
    assert lora is not None
    assert (lora.max_adapters_running, lora.max_adapters_waiting) == (2, 2)
    assert lora.adapter_loads is None
    assert (
        "GET /metrics of the vllm serve process" in lora.counts_provenance["max_adapters_running"]
    )
    (proc,) = _LoraServeProcess.launched
    assert proc.fake.lora_gauge is not None and proc.fake.lora_gauge.max_lora == 2


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None, reason="needs aiohttp")
def test_endpoint_counts_come_from_the_servers_metrics() -> None:
    """backend: endpoint reads the running server's gauge around the run, with the same auth
    header as its requests; the provenance says it counts all the server's requests."""
    from llenergymeasure_harness.backends.base import GenerationRequest
    from llenergymeasure_harness.lora import assign_adapters
    from llenergymeasure_harness.serving.backends import EndpointBackend
    from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer

    behaviour = FakeSSEBehaviour(model="base", lora_models=("sql", "chat"), token_delay_s=0.002)
    with FakeSSEServer(behaviour) as srv:
        cfg = endpoint_lora_config(srv.base_url)
        backend = EndpointBackend()
        backend.load(cfg)
        probe = backend.lora_probe
        assert probe is not None
        requests = [GenerationRequest(i, [5, 6, 7, 8], 3) for i in range(4)]
        backend.run(assign_adapters(cfg, requests))  # warmup: seen before the window
        probe.begin()
        backend.run(assign_adapters(cfg, requests[:1]))  # one request: one adapter
        counts = probe.end()
    assert (counts.max_adapters_running, counts.max_adapters_waiting) == (1, 1)
    assert "not only llem's" in counts.provenance["max_adapters_running"]
