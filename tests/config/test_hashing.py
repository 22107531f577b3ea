"""config_hash and study_design_hash: stable, canonical, and sensitive to every knob."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.loader import load_study

Write = Callable[[str, str], Path]

#: The hash of ``ExperimentConfig(model="tiny-llama", load_format="dummy")``, computed once
#: and pinned. If this test fails, the identity of every existing result changed (a field was
#: added, renamed, re-defaulted or re-ordered): that breaks ``--resume`` and result folders, so
#: do it on purpose, then update the literal and say so in the changelog.
PINNED_HASH = "9f739b2c07571497"
PINNED_CONFIG = {"model": "tiny-llama", "load_format": "dummy"}


def config_hash(data: dict[str, Any]) -> str:
    return ExperimentConfig.model_validate(data).config_hash


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


# --------------------------------------------------------------------------- stability


def test_config_hash_is_pinned_for_a_fixed_config() -> None:
    """The hash of a fixed config is a literal, so an accidental schema change is caught."""
    assert config_hash(PINNED_CONFIG) == PINNED_HASH


def test_config_hash_is_16_hex_digits() -> None:
    """The identity is 16 lower-case hex digits (it names result folders)."""
    h = config_hash(PINNED_CONFIG)
    assert len(h) == 16
    assert set(h) <= set("0123456789abcdef")


@pytest.mark.parametrize("hash_seed", ["0", "1", "12345"])
def test_config_hash_is_the_same_in_another_process(hash_seed: str) -> None:
    """A fresh interpreter with any PYTHONHASHSEED computes the same hash."""
    code = (
        "from llenergymeasure.config import ExperimentConfig as E\n"
        "import json, sys\n"
        "print(E.model_validate(json.loads(sys.argv[1])).config_hash)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(PINNED_CONFIG)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=60,
    )
    assert out.stdout.strip() == PINNED_HASH


def test_config_hash_survives_a_json_round_trip() -> None:
    """The harness re-reads the config from JSON and must compute the same identity."""
    cfg = ExperimentConfig.model_validate(
        {
            "model": "tiny-llama",
            "load_format": "dummy",
            "pytorch": {"model_kwargs": {"b": 1, "a": {"y": 2, "x": 1}}},
        }
    )
    again = ExperimentConfig.model_validate_json(cfg.to_json())
    assert again.config_hash == cfg.config_hash


# --------------------------------------------------------------------------- insensitivity


def test_config_hash_ignores_key_order_in_yaml(write: Write) -> None:
    """Two YAML files with the same keys in different orders give the same hash."""
    a = write(
        "a.yaml",
        """\
        model: tiny-llama
        load_format: dummy
        precision: float16
        decoder: {temperature: 0.7, top_p: 0.9}
        pytorch: {batch_size: 2, attn_implementation: eager}
        """,
    )
    b = write(
        "b.yaml",
        """\
        pytorch: {attn_implementation: eager, batch_size: 2}
        decoder: {top_p: 0.9, temperature: 0.7}
        precision: float16
        load_format: dummy
        model: tiny-llama
        """,
    )
    (ea,) = load_study(a).experiments
    (eb,) = load_study(b).experiments
    assert ea.config_hash == eb.config_hash


@pytest.mark.parametrize(
    ("backend", "section", "field"),
    [
        ("pytorch", "pytorch", "model_kwargs"),
        ("pytorch", "pytorch", "generate_kwargs"),
        ("vllm", "vllm", "engine_args"),
        ("vllm", "vllm", "speculative_config"),
        ("tensorrt", "tensorrt", "build_args"),
        ("tensorrt", "tensorrt", "llm_args"),
    ],
)
def test_config_hash_ignores_key_order_in_passthrough_dicts(
    backend: str, section: str, field: str
) -> None:
    """Passthrough dicts (nested ones too) hash the same in any key order."""
    forward = {
        "method": "ngram",
        "num_speculative_tokens": 2,
        "z": {"b": 1, "a": [{"d": 1, "c": 2}]},
    }
    backward = {
        "z": {"a": [{"c": 2, "d": 1}], "b": 1},
        "num_speculative_tokens": 2,
        "method": "ngram",
    }
    assert list(forward) != list(backward)
    base = {"model": "tiny-llama", "load_format": "dummy", "backend": backend}
    h1 = config_hash({**base, section: {field: forward}})
    h2 = config_hash({**base, section: {field: backward}})
    assert h1 == h2
    assert h1 != config_hash(base)


def test_config_hash_ignores_name() -> None:
    """``name`` is a free label: it never changes the identity."""
    assert config_hash({**PINNED_CONFIG, "name": "a"}) == PINNED_HASH
    assert config_hash({**PINNED_CONFIG, "name": "something else"}) == PINNED_HASH


def test_config_hash_ignores_how_a_value_was_spelt() -> None:
    """An alias (``bf16``) or an explicit default hashes like the resolved value."""
    assert config_hash({**PINNED_CONFIG, "precision": "bf16"}) == PINNED_HASH
    assert config_hash({**PINNED_CONFIG, "pytorch": {"batch_size": 1}}) == PINNED_HASH
    assert config_hash({**PINNED_CONFIG, "dataset": {"source": "synthetic"}}) == PINNED_HASH


def test_config_hash_of_the_default_traffic_is_the_hash_from_before_traffic_existed() -> None:
    """``traffic:`` at its default (spelt out or not) leaves the pinned identity unchanged."""
    assert config_hash({**PINNED_CONFIG, "traffic": {}}) == PINNED_HASH
    assert config_hash({**PINNED_CONFIG, "traffic": {"pattern": "offline", "seed": 0}}) == (
        PINNED_HASH
    )
    poisson = {**PINNED_CONFIG, "traffic": {"pattern": "poisson", "rate_per_s": 2.0}}
    assert config_hash(poisson) != PINNED_HASH
    assert config_hash({**PINNED_CONFIG, "server": None}) == PINNED_HASH
    served = {**PINNED_CONFIG, "backend": "vllm", "gpus": [0]}
    assert config_hash({**served, "server": {}}) != config_hash(served)


# --------------------------------------------------------------------------- sensitivity

BASE: dict[str, Any] = {"model": "tiny-llama", "load_format": "dummy", "gpus": [0, 1, 2, 3]}
JSONL = {"dataset": {"source": "jsonl", "path": "/data/p.jsonl"}, "tokenizer": "gpt2"}
HUB = {"dataset": {"source": "hub", "name": "org/set"}, "tokenizer": "gpt2"}
CHAT = {
    "dataset": {"source": "jsonl", "path": "/data/c.jsonl", "format": "chat"},
    "tokenizer": "gpt2",
}
VLLM = {"backend": "vllm"}
TRT = {"backend": "tensorrt"}
PT = {"backend": "pytorch"}
POISSON = {"traffic": {"pattern": "poisson", "rate_per_s": 4.0}}
GAMMA = {"traffic": {"pattern": "gamma", "rate_per_s": 4.0, "burstiness": 2.0}}
CLOSED = {"traffic": {"pattern": "closed_loop", "concurrency": 4}}
SLO = {"traffic": {"slo": {"ttft_s": 1.0, "tpot_s": 0.05}}}
LORA = {"backend": "vllm", "lora": {"adapters": [{"generate": {"count": 2, "rank": 8}}]}}
SERVED = {"backend": "vllm", "server": {}}
EP = {"backend": "endpoint", "gpus": [], "endpoint": {"url": "http://127.0.0.1:8000"}}
QUAL = {"model": "org/m", "load_format": "auto", "quality": {"tasks": ["gsm8k"]}}

NORMAL = {"dist": "normal", "mean": 64, "stddev": 8, "min": 2, "max": 200}
HIST = {"dist": "empirical", "bins": [1, 10, 20], "counts": [1, 2], "path": "h.json"}
#: (leaf of a length spec, a spec holding it, a changed value)
LENGTH_KNOBS: list[tuple[str, dict[str, Any], Any]] = [
    ("dist", NORMAL, "lognormal"),
    ("mean", NORMAL, 65),
    ("stddev", NORMAL, 9),
    ("min", NORMAL, 3),
    ("max", NORMAL, 199),
    ("shape", {"dist": "pareto", "mean": 64, "shape": 2.5}, 3.0),
    ("bins", HIST, [1, 11, 20]),
    ("counts", HIST, [2, 1]),
    ("path", HIST, "other.json"),
    ("values", {"dist": "empirical", "values": [3, 4]}, [3, 5]),
]
PROFILED = {
    "dataset": {
        "profile": "mine.yaml",
        "input_len": 16,
        "provenance": {"name": "mine", "description": "d", "source": "s", "date": "2026-01-01"},
    }
}

#: (leaf it covers, extra base settings, changes): every leaf of ExperimentConfig appears.
KNOBS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("model", {}, {"model": "llama-3.1-8b"}),
    ("load_format", {}, {"load_format": "auto"}),
    ("tokenizer", {}, {"tokenizer": "gpt2"}),
    ("revision", {}, {"revision": "main"}),
    ("trust_remote_code", {}, {"trust_remote_code": True}),
    ("backend", {}, {"backend": "vllm"}),
    ("precision", {}, {"precision": "float16"}),
    ("dataset.source", {}, {"dataset": {"source": "hub", "name": "org/set"}, "tokenizer": "gpt2"}),
    *(
        (f"dataset.{role}.{leaf}", {"dataset": {role: spec}}, {f"dataset.{role}.{leaf}": value})
        for role in ("input_len", "output_len")
        for leaf, spec, value in LENGTH_KNOBS
    ),
    ("dataset.profile", PROFILED, {"dataset.profile": "theirs.yaml"}),
    *(
        (f"dataset.provenance.{leaf}", PROFILED, {f"dataset.provenance.{leaf}": value})
        for leaf, value in (
            ("name", "other"),
            ("description", "other"),
            ("source", "other"),
            ("date", "2026-01-02"),
            ("assumptions", ["other"]),
            ("reproduces", {"output_len": {"mean": 5.0}}),
        )
    ),
    ("dataset.path", JSONL, {"dataset.path": "/data/q.jsonl"}),
    ("dataset.text_field", JSONL, {"dataset.text_field": "text"}),
    ("dataset.format", JSONL, {"dataset.format": "chat"}),
    ("dataset.messages_field", CHAT, {"dataset.messages_field": "conversation"}),
    ("dataset.turns", CHAT, {"dataset.turns": "each"}),
    ("dataset.name", HUB, {"dataset.name": "org/other"}),
    ("dataset.split", HUB, {"dataset.split": "test"}),
    ("dataset.subset", HUB, {"dataset.subset": "en"}),
    ("n_prompts", {}, {"n_prompts": 50}),
    ("max_input_tokens", {}, {"max_input_tokens": 256}),
    ("max_output_tokens", {}, {"max_output_tokens": 64}),
    ("ignore_eos", {}, {"ignore_eos": False}),
    ("decoder.preset", {}, {"decoder.preset": "greedy"}),
    ("decoder.temperature", {}, {"decoder.temperature": 0.5}),
    ("decoder.top_p", {}, {"decoder.top_p": 0.9}),
    ("decoder.top_k", {}, {"decoder.top_k": 10}),
    ("decoder.repetition_penalty", {}, {"decoder.repetition_penalty": 1.1}),
    ("warmup.mode", {}, {"warmup.mode": "convergence"}),
    ("warmup.n_batches", {}, {"warmup.n_batches": 3}),
    ("warmup.cv_threshold", {}, {"warmup.cv_threshold": 0.1}),
    ("warmup.window", {}, {"warmup.window": 4}),
    ("warmup.max_batches", {}, {"warmup.max_batches": 10}),
    ("warmup.min_duration_s", {}, {"warmup.min_duration_s": 5.0}),
    ("baseline.enabled", {}, {"baseline.enabled": False}),
    ("baseline.duration_s", {}, {"baseline.duration_s": 20.0}),
    ("baseline.cache_ttl_s", {}, {"baseline.cache_ttl_s": 0.0}),
    ("energy.sampler", {}, {"energy.sampler": "nvml"}),
    ("energy.sample_rate_hz", {}, {"energy.sample_rate_hz": 20.0}),
    ("energy.timeseries", {}, {"energy.timeseries": False}),
    ("gpus", {}, {"gpus": [0, 1, 2]}),
    ("random_seed", {}, {"random_seed": 7}),
    ("traffic.pattern", {}, {"traffic": {"pattern": "closed_loop", "concurrency": 4}}),
    ("traffic.rate_per_s", POISSON, {"traffic.rate_per_s": 8.0}),
    ("traffic.burstiness", GAMMA, {"traffic.burstiness": 0.5}),
    ("traffic.concurrency", CLOSED, {"traffic.concurrency": 8}),
    ("traffic.seed", POISSON, {"traffic.seed": 7}),
    ("traffic.max_wait_s", POISSON, {"traffic.max_wait_s": 0.2}),
    ("traffic.slo.ttft_s", SLO, {"traffic.slo.ttft_s": 0.5}),
    ("traffic.slo.tpot_s", SLO, {"traffic.slo.tpot_s": 0.01}),
    ("server.port", SERVED, {"server.port": 8123}),
    ("server.startup_timeout_s", SERVED, {"server.startup_timeout_s": 60.0}),
    ("server.args", SERVED, {"server.args": ["--max-log-len", "10"]}),
    ("endpoint.url", EP, {"endpoint.url": "http://127.0.0.1:9000"}),
    ("endpoint.api_key_env", EP, {"endpoint.api_key_env": "MY_KEY"}),
    ("endpoint.basic_auth_env", EP, {"endpoint.basic_auth_env": "MY_AUTH"}),
    ("endpoint.prompt_format", EP, {"endpoint.prompt_format": "text"}),
    ("endpoint.request_timeout_s", EP, {"endpoint.request_timeout_s": 30.0}),
    ("endpoint.max_concurrency", EP, {"endpoint.max_concurrency": 8}),
    ("endpoint.completions_logprobs", EP, {"endpoint.completions_logprobs": True}),
    ("quality.tasks", QUAL, {"quality.tasks": ["hellaswag"]}),
    ("quality.limit", QUAL, {"quality.limit": 10}),
    ("quality.num_fewshot", QUAL, {"quality.num_fewshot": 5}),
    ("quality.seed", QUAL, {"quality.seed": 1}),
    ("quality.batch_size", QUAL, {"quality.batch_size": 1}),
    ("quality.apply_chat_template", QUAL, {"quality.apply_chat_template": True}),
    (
        "quality.fewshot_as_multiturn",
        {**QUAL, "quality": {"tasks": ["gsm8k"], "apply_chat_template": True}},
        {"quality.fewshot_as_multiturn": True},
    ),
    ("quality.system_instruction", QUAL, {"quality.system_instruction": "Be brief."}),
    ("quality.max_length", QUAL, {"quality.max_length": 1024}),
    ("quality.bootstrap_iters", QUAL, {"quality.bootstrap_iters": 0}),
    ("pytorch.batch_size", PT, {"pytorch.batch_size": 2}),
    ("pytorch.attn_implementation", PT, {"pytorch.attn_implementation": "eager"}),
    ("pytorch.static_kv_cache", PT, {"pytorch.static_kv_cache": True}),
    ("pytorch.torch_compile", PT, {"pytorch.torch_compile": True}),
    ("pytorch.compile_mode", PT, {"pytorch.compile_mode": "max-autotune"}),
    ("pytorch.quantization", PT, {"pytorch.quantization": "bnb_8bit"}),
    ("pytorch.bnb_4bit_quant_type", PT, {"pytorch.bnb_4bit_quant_type": "fp4"}),
    ("pytorch.device_map", PT, {"pytorch.device_map": "auto"}),
    ("pytorch.model_kwargs", PT, {"pytorch.model_kwargs": {"a": 1}}),
    ("pytorch.generate_kwargs", PT, {"pytorch.generate_kwargs": {"a": 1}}),
    ("vllm.tensor_parallel_size", VLLM, {"vllm.tensor_parallel_size": 2}),
    ("vllm.pipeline_parallel_size", VLLM, {"vllm.pipeline_parallel_size": 2}),
    ("vllm.gpu_memory_utilization", VLLM, {"vllm.gpu_memory_utilization": 0.8}),
    ("vllm.max_num_seqs", VLLM, {"vllm.max_num_seqs": 64}),
    ("vllm.max_num_batched_tokens", VLLM, {"vllm.max_num_batched_tokens": 4096}),
    ("vllm.max_model_len", VLLM, {"vllm.max_model_len": 2048}),
    ("vllm.enable_chunked_prefill", VLLM, {"vllm.enable_chunked_prefill": False}),
    ("vllm.enable_prefix_caching", VLLM, {"vllm.enable_prefix_caching": True}),
    ("vllm.kv_cache_dtype", VLLM, {"vllm.kv_cache_dtype": "fp8"}),
    ("vllm.block_size", VLLM, {"vllm.block_size": 32}),
    ("vllm.quantization", VLLM, {"vllm.quantization": "awq"}),
    ("vllm.enforce_eager", VLLM, {"vllm.enforce_eager": True}),
    ("vllm.cudagraph_mode", VLLM, {"vllm.cudagraph_mode": "PIECEWISE"}),
    ("vllm.cudagraph_capture_sizes", VLLM, {"vllm.cudagraph_capture_sizes": [1, 2, 4]}),
    ("vllm.max_cudagraph_capture_size", VLLM, {"vllm.max_cudagraph_capture_size": 8}),
    ("vllm.async_scheduling", VLLM, {"vllm.async_scheduling": True}),
    (
        "vllm.speculative_config",
        VLLM,
        {"vllm.speculative_config": {"method": "ngram", "num_speculative_tokens": 2}},
    ),
    ("vllm.engine_args", VLLM, {"vllm.engine_args": {"swap_space": 4}}),
    ("tensorrt.trtllm_backend", TRT, {"tensorrt.trtllm_backend": "pytorch"}),
    ("tensorrt.max_batch_size", TRT, {"tensorrt.max_batch_size": 16}),
    ("tensorrt.max_num_tokens", TRT, {"tensorrt.max_num_tokens": 4096}),
    ("tensorrt.max_seq_len", TRT, {"tensorrt.max_seq_len": 2048}),
    ("tensorrt.max_input_len", TRT, {"tensorrt.max_input_len": 512}),
    ("tensorrt.tensor_parallel_size", TRT, {"tensorrt.tensor_parallel_size": 2}),
    ("tensorrt.pipeline_parallel_size", TRT, {"tensorrt.pipeline_parallel_size": 2}),
    ("tensorrt.quantization", TRT, {"tensorrt.quantization": "fp8"}),
    (
        "tensorrt.kv_cache_quantization",
        {**TRT, "tensorrt": {"quantization": "fp8"}},
        {"tensorrt.kv_cache_quantization": "fp8"},
    ),
    (
        "tensorrt.kv_cache_free_gpu_memory_fraction",
        TRT,
        {"tensorrt.kv_cache_free_gpu_memory_fraction": 0.5},
    ),
    ("tensorrt.enable_block_reuse", TRT, {"tensorrt.enable_block_reuse": True}),
    ("tensorrt.enable_chunked_prefill", TRT, {"tensorrt.enable_chunked_prefill": True}),
    ("tensorrt.engine_cache", TRT, {"tensorrt.engine_cache": False}),
    ("tensorrt.build_args", TRT, {"tensorrt.build_args": {"opt_num_tokens": 128}}),
    ("tensorrt.llm_args", TRT, {"tensorrt.llm_args": {"enable_attention_dp": True}}),
    ("lora.adapters", LORA, {"lora.adapters": [{"generate": {"count": 3, "rank": 8}}]}),
    ("lora.selection", LORA, {"lora.selection": "zipf"}),
    ("lora.zipf_s", LORA, {"lora.zipf_s": 1.5}),
    ("lora.max_loras", LORA, {"lora.max_loras": 1}),
    ("lora.max_lora_rank", LORA, {"lora.max_lora_rank": 16}),
    ("lora.max_cpu_loras", LORA, {"lora.max_cpu_loras": 4}),
]

#: Leaves that are not knobs: the label, and a value derived from another field.
NOT_KNOBS = {"name": "a label", "decoder.do_sample": "derived from decoder.temperature"}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _models_in(a)]
    return (
        [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []
    )


def leaf_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted leaf field under ``model`` (unions contribute all their members' fields)."""
    for name, info in model.model_fields.items():
        children = _models_in(info.annotation)
        if children:
            seen: set[str] = set()
            for child in children:
                for path in leaf_paths(child, f"{prefix}{name}."):
                    if path not in seen:
                        seen.add(path)
                        yield path
        else:
            yield f"{prefix}{name}"


def test_the_knob_table_covers_every_leaf_of_the_config() -> None:
    """A new field must be added to KNOBS (and so proven to change the hash)."""
    covered = [leaf for leaf, _, _ in KNOBS]
    assert len(covered) == len(set(covered))
    assert set(covered) | set(NOT_KNOBS) == set(leaf_paths(ExperimentConfig))


@pytest.mark.parametrize(("leaf", "extra", "changes"), KNOBS, ids=[k[0] for k in KNOBS])
def test_config_hash_changes_with_every_knob(
    leaf: str, extra: dict[str, Any], changes: dict[str, Any]
) -> None:
    """Changing any one knob from its value in a valid config gives a different hash."""
    base = {**copy.deepcopy(BASE), **copy.deepcopy(extra)}
    changed = copy.deepcopy(base)
    for key, value in changes.items():
        set_dotted(changed, key, value)
    assert config_hash(base) != config_hash(changed), leaf


# --------------------------------------------------------------------------- study design


STUDY = """\
name: design
model: tiny-llama
load_format: dummy
n_prompts: 64
sweep:
  pytorch.batch_size: [1, 8]
"""


def test_study_design_hash_ignores_the_execution_block(write: Write) -> None:
    """Cycles, order, seed and gaps do not change what is measured, nor the design hash."""
    plain = load_study(write("a.yaml", STUDY))
    executed = load_study(
        write(
            "b.yaml",
            STUDY
            + "execution: {n_cycles: 5, cycle_order: shuffled, shuffle_seed: 3, "
            + "config_gap_s: 1, cycle_gap_s: 2, experiment_timeout_s: 60}\n",
        )
    )
    overridden = load_study(
        write("c.yaml", STUDY), execution_overrides={"n_cycles": 2, "cycle_order": "interleaved"}
    )
    assert plain.study_design_hash == executed.study_design_hash == overridden.study_design_hash


def test_study_design_hash_changes_with_the_experiments(write: Write) -> None:
    """Another sweep value, an extra experiment or a changed shared field change the hash."""
    base = load_study(write("a.yaml", STUDY)).study_design_hash
    other_value = load_study(write("b.yaml", STUDY.replace("[1, 8]", "[1, 16]")))
    extra = load_study(write("c.yaml", STUDY + "experiments:\n  - {n_prompts: 32}\n"))
    shared = load_study(write("d.yaml", STUDY.replace("n_prompts: 64", "n_prompts: 65")))
    hashes = {base, other_value.study_design_hash, extra.study_design_hash}
    hashes.add(shared.study_design_hash)
    assert len(hashes) == 4


def test_study_design_hash_is_stable_across_loads(write: Write) -> None:
    """Loading the same file twice gives the same design hash (16 hex digits)."""
    path = write("a.yaml", STUDY)
    first, second = load_study(path).study_design_hash, load_study(path).study_design_hash
    assert first == second
    assert len(first) == 16
