"""Server mode for vLLM without a GPU: what the harness hands `vllm serve` and sends it.

The serve process is replaced by the in-package fake SSE server (vLLM itself needs a GPU);
everything else is the real :class:`ServerBackend`: the dummy-weights directory it writes, the
command it builds, the fields each request carries and the cleanup at close.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.serving import backends as serving_backends
from llenergymeasure_harness.testing.fake_sse_server import FakeSSEBehaviour, FakeSSEServer

if importlib.util.find_spec("aiohttp") is None:  # `make install` installs it (dev extra)
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI must run the server-mode tests: aiohttp is missing")
    pytest.skip("aiohttp is not installed (make install)", allow_module_level=True)


#: Start-up lines of `vllm serve` 0.26.0 on the H200 (2026-12-02), as the harness kept them.
H200_SERVE_LOG = "\n".join(
    [
        "(APIServer pid=1404) INFO 12-02 04:46:07 [scheduler.py:252] Chunked prefill is "
        "enabled with max_num_batched_tokens=8192.",
        "(APIServer pid=1404) INFO 12-02 04:46:07 [vllm.py:1109] Asynchronous scheduling is "
        "enabled.",
        "(EngineCore pid=1469) INFO 12-02 04:46:25 [core.py:116] Initializing a V1 LLM engine "
        "(v0.26.0) with config: model='/tmp/llem-serve-5y_x8zan/dummy-model', "
        "skip_tokenizer_init=True, enable_prefix_caching=True, enable_chunked_prefill=True, "
        "pooler_config=None",
    ]
)


class _FakeServeProcess:
    """Stands in for ManagedServer: records the argv, serves with the fake SSE server."""

    launched: ClassVar[list[_FakeServeProcess]] = []

    def __init__(self, argv: list[str], *, port: int, log_path: Path, **_: Any) -> None:
        self.argv = argv
        self.model_dir = Path(argv[4])
        self.config_seen: dict[str, Any] | None = None
        self.fake = FakeSSEServer(FakeSSEBehaviour(model="llama-3.1-8b"))
        self.stopped = False
        log_path.write_text(H200_SERVE_LOG, encoding="utf-8")
        _FakeServeProcess.launched.append(self)

    @property
    def base_url(self) -> str:
        return self.fake.base_url

    def start(self) -> None:
        # what `vllm serve` would read at start-up
        self.config_seen = json.loads((self.model_dir / "config.json").read_text("utf-8"))
        self.fake.start()

    def wait_healthy(self, timeout_s: float) -> float:
        return 0.01

    def stop(self, grace_s: float = 0.0) -> int:
        self.fake.stop()
        self.stopped = True
        return 0


@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> type[_FakeServeProcess]:
    _FakeServeProcess.launched = []
    monkeypatch.setattr(serving_backends, "ManagedServer", _FakeServeProcess)
    return _FakeServeProcess


def test_dummy_vllm_server_gets_a_config_dir_and_fresh_cache_salts(
    fake_serve: type[_FakeServeProcess], tmp_path: Path
) -> None:
    """A built-in architecture with dummy weights is served from a config-only directory
    under the experiment's model name; each run (warmup, measured) gets its own prefix-cache
    salt, so the measured run cannot reuse the warmup's KV blocks; the directory keeps one
    path per config under vLLM's cache root (vLLM's compile-cache key holds it) and stays
    after close, which stops the server."""
    config = ExperimentConfig.model_validate(
        {
            "model": "llama-3.1-8b",
            "backend": "vllm",
            "load_format": "dummy",
            "n_prompts": 2,
            "max_output_tokens": 3,
            "server": {},
        }
    )
    backend = serving_backends.ServerBackend()
    backend.output_dir = tmp_path
    backend.load(config)
    (proc,) = fake_serve.launched
    assert proc.argv[1:4] == ["-m", "vllm.entrypoints.cli.main", "serve"]
    assert proc.config_seen is not None and proc.config_seen["hidden_size"] == 4096
    assert proc.argv[proc.argv.index("--served-model-name") + 1] == "llama-3.1-8b"
    assert "--skip-tokenizer-init" in proc.argv and "--load-format" in proc.argv

    resolved = backend.server_info["engine_resolved"]
    assert resolved["max_num_batched_tokens"] == 8192 and resolved["async_scheduling"] is True
    assert resolved["enable_prefix_caching"] is True and resolved["max_num_seqs"] is None

    requests = [GenerationRequest(i, [10 + i] * 4, 3) for i in range(2)]
    backend.run(requests)  # warmup
    records = backend.run(requests)  # measured
    assert [r.output_tokens for r in records] == [3, 3]
    bodies = proc.fake.behaviour.requests
    salts = [b["cache_salt"] for b in bodies]
    assert len(set(salts[:2])) == 1 and len(set(salts[2:])) == 1 and salts[0] != salts[2]
    assert all(b["return_token_ids"] is True and b["prompt"][0] >= 10 for b in bodies)

    backend.close()
    assert proc.stopped and proc.model_dir.parent.parent.name == "llem-dummy-models"
    assert (proc.model_dir / "config.json").is_file()
    backend.close()  # twice is safe


def test_resolved_settings_have_the_same_keys_in_process_and_served() -> None:
    """The in-process engine's resolved settings and the server's (from its log) share keys,
    so the two modes compare knob for knob; a log that states none gives None."""
    from types import SimpleNamespace

    from llenergymeasure_harness.backends.vllm import resolved_engine_config
    from llenergymeasure_harness.serving.server import vllm_resolved_from_log

    engine = SimpleNamespace(
        scheduler_config=SimpleNamespace(
            max_num_batched_tokens=16384,
            max_num_seqs=256,
            enable_chunked_prefill=True,
            async_scheduling=True,
        ),
        cache_config=SimpleNamespace(enable_prefix_caching=True, block_size=16),
    )
    in_process = resolved_engine_config(engine)
    served = vllm_resolved_from_log(H200_SERVE_LOG)
    assert in_process is not None and served is not None
    assert set(in_process) == set(served)
    assert in_process["max_num_batched_tokens"] == 16384 != served["max_num_batched_tokens"]
    assert resolved_engine_config(None) is None
    assert vllm_resolved_from_log("INFO: Uvicorn running on http://127.0.0.1:8000") is None


def test_a_rate_sweep_group_starts_the_server_once(
    fake_serve: type[_FakeServeProcess], tmp_path: Path
) -> None:
    """Engine reuse in server mode: two traffic rates in one group start `vllm serve` once;
    each rate's client traffic runs against it into its own result, and close stops it."""
    import time

    from llenergymeasure_contract.env import HarnessEnv
    from llenergymeasure_contract.reuse import EngineGroup, GroupMember, engine_key
    from llenergymeasure_harness.experiment import Deps
    from llenergymeasure_harness.group import run_group
    from llenergymeasure_harness.testing import FakeNvml

    def config(rate: float) -> ExperimentConfig:
        return ExperimentConfig.model_validate(
            {
                "model": "llama-3.1-8b",
                "backend": "vllm",
                "load_format": "dummy",
                "n_prompts": 4,
                "max_input_tokens": 8,
                "max_output_tokens": 3,
                "server": {},
                "warmup": {"n_batches": 1},
                "baseline": {"enabled": False},
                "energy": {"timeseries": False},
                "traffic": {"pattern": "poisson", "rate_per_s": rate},
            }
        )

    configs = [config(20.0), config(40.0)]
    assert engine_key(configs[0]) == engine_key(configs[1])
    members = [
        GroupMember(run_id=f"r{i}", config=c, results_dir=str(tmp_path / f"r{i}"))
        for i, c in enumerate(configs)
    ]
    group = EngineGroup(group_id="g1", engine_key=engine_key(configs[0]), members=members)
    env = HarnessEnv(config=configs[0], run_id="r0", results_dir=str(tmp_path / "r0"))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=time.perf_counter, power_w=300.0),
        make_backend=lambda name: serving_backends.ServerBackend(),
        cuda_visible=None,
    )
    outcome = run_group(env, group, deps)
    assert [m.state for m in outcome.members] == ["completed", "completed"]
    (proc,) = fake_serve.launched
    assert proc.stopped
    results = [m.result for m in outcome.members]
    assert [r.traffic.rate_per_s for r in results if r and r.traffic] == [20.0, 40.0]
    assert all(r is not None and r.engine_share is not None for r in results)
