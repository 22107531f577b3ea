"""A corpus of bad study files: each exits 2 through the real CLI and names its key path.

Every case is a small file written to tmp_path and run with
``llem run FILE --dry-run`` in-process. The message must name the file and the offending key
path (``sweep.pytorch.batch_size[2]``, ``experiments[1].model``, or the line of a syntax
error), and never show a traceback.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llenergymeasure.cli import main

HEAD = "model: tiny-llama\nload_format: dummy\nn_prompts: 64\n"
CHAT = HEAD + "tokenizer: ./tok\n"
#: A local tokenizer directory with a chat template, and one good chat line.
TOK = {"tok/tokenizer_config.json": "{}", "tok/chat_template.jinja": "{{ messages }}"}
CHAT_LINE = '{"messages": [{"role": "user", "content": "hi"}]}\n'


@dataclass(frozen=True)
class Case:
    """One bad file: its text, the key path its error must name, and any side files."""

    id: str
    text: str
    key: str  # substring the error must contain: the offending key path (or line)
    files: dict[str, str] = field(default_factory=dict)  # other files next to it
    suffix: str = ".yaml"


CASES = [
    # ---- malformed files
    Case("malformed-yaml", "model: [unclosed\n", "invalid YAML at line 2"),
    Case("tab-indent", "model: tiny-llama\n\tload_format: dummy\n", "invalid YAML at line 2"),
    Case("duplicate-key", "model: a\nmodel: b\n", "duplicate key 'model'"),
    Case(
        "duplicate-nested-key",
        HEAD + "decoder:\n  temperature: 0.1\n  temperature: 0.2\n",
        "duplicate key 'temperature'",
    ),
    Case("empty-file", "", "file is empty"),
    Case("comments-only", "# nothing here\n", "file is empty"),
    Case("top-level-list", "- model: tiny-llama\n", "top level must be a mapping"),
    Case("top-level-scalar", "tiny-llama\n", "top level must be a mapping"),
    Case("malformed-json", '{"model": "tiny-llama",}', "invalid JSON at line 1", suffix=".json"),
    Case("non-string-key", HEAD + "on: 2\n", "True: keys must be strings"),
    # ---- wrong types
    Case("n_prompts-not-int", HEAD + "n_prompts: many\n", "n_prompts"),
    Case("gpus-not-list", HEAD + "gpus: 0\n", "gpus"),
    Case("gpus-item-not-int", HEAD + "gpus: [0, a]\n", "gpus.1"),
    Case("ignore_eos-not-bool", HEAD + "ignore_eos: maybe\n", "ignore_eos"),
    Case("decoder-not-mapping", HEAD + "decoder: 5\n", "decoder"),
    Case(
        "decoder-not-mapping-with-sweep",
        HEAD + "decoder: 5\nsweep:\n  decoder.temperature: [0.0, 0.5]\n",
        "decoder",
    ),
    Case("model-missing", "load_format: dummy\n", "model: Field required"),
    Case(
        "experiment-model-type",
        HEAD + "experiments:\n  - {n_prompts: 4}\n  - {model: 5}\n",
        "experiments[1].model",
    ),
    Case("experiment-not-mapping", HEAD + "experiments:\n  - 3\n", "experiments[0]"),
    Case("experiments-not-list", HEAD + "experiments: {model: x}\n", "experiments"),
    Case("dataset-source-unknown", HEAD + "dataset: {source: csv}\n", "dataset"),
    Case("results_dir-not-string", HEAD + "results_dir: 5\n", "results_dir"),
    # ---- unknown keys
    Case("unknown-top-level", HEAD + "n_promts: 4\n", "n_promts: unknown key"),
    Case("unknown-nested", HEAD + "decoder: {temprature: 0.5}\n", "decoder.temprature"),
    Case(
        "unknown-in-sweep",
        HEAD + "sweep:\n  decoder.temprature: [0.1]\n",
        "sweep.decoder.temprature",
    ),
    Case(
        "unknown-in-sweep-value",
        HEAD + "sweep:\n  pytorch: [{batch_size: 1}, {bach_size: 2}]\n",
        "sweep.pytorch[1].bach_size",
    ),
    Case(
        "unknown-in-experiment",
        HEAD + "experiments:\n  - {n_prompts: 4}\n  - {modle: x}\n",
        "experiments[1].modle",
    ),
    Case("unknown-in-execution", HEAD + "execution: {n_cycle: 2}\n", "execution.n_cycle"),
    Case("unknown-in-docker", HEAD + "docker: {netwrk_mode: none}\n", "docker.netwrk_mode"),
    # ---- misplaced sections and keys
    Case(
        "section-not-matching-backend",
        HEAD + "backend: pytorch\nvllm: {max_num_seqs: 4}\n",
        "vllm: section does not match",
    ),
    Case(
        "entry-section-not-matching-backend",
        HEAD + "experiments:\n  - {tensorrt: {max_batch_size: 8}}\n",
        "experiments[0]",
    ),
    Case(
        "study-key-in-experiment",
        HEAD + "experiments:\n  - {execution: {n_cycles: 2}}\n",
        "experiments[0].execution",
    ),
    Case(
        "sweep-in-experiment",
        HEAD + "experiments:\n  - {sweep: {precision: [float16]}}\n",
        "experiments[0].sweep",
    ),
    Case(
        "scoped-key-unused-backend",
        HEAD + "sweep:\n  vllm.max_num_seqs: [64, 256]\n",
        "sweep.vllm.max_num_seqs",
    ),
    Case("study-key-swept", HEAD + "sweep:\n  name: [a, b]\n", "sweep.name"),
    # ---- bad dotted keys
    Case("dotted-into-a-leaf", HEAD + "sweep:\n  n_prompts.x: [1]\n", "sweep.n_prompts.x"),
    Case(
        "dotted-misspelt-field",
        HEAD + "sweep:\n  pytorch.bach_size: [1]\n",
        "sweep.pytorch.bach_size",
    ),
    Case(
        "dotted-empty-part",
        HEAD + "sweep:\n  decoder..temperature: [0.1]\n",
        "sweep.decoder..temperature",
    ),
    Case(
        "dotted-unknown-section",
        HEAD + "sweep:\n  sglang.max_running_requests: [1]\n",
        "sweep.sglang.max_running_requests",
    ),
    Case(
        "dotted-key-at-top-level",
        HEAD + "decoder.temperature: 0.5\n",
        "decoder.temperature: dotted keys work only in sweep",
    ),
    Case(
        "dotted-key-in-experiment",
        HEAD + "experiments:\n  - {pytorch.batch_size: 2}\n",
        "experiments[0].pytorch.batch_size: dotted keys work only in sweep",
    ),
    # ---- sweep shape
    Case("sweep-value-not-list", HEAD + "sweep:\n  precision: float16\n", "sweep.precision"),
    Case("sweep-value-empty-list", HEAD + "sweep:\n  precision: []\n", "sweep.precision"),
    Case("sweep-not-mapping", HEAD + "sweep: [precision, float16]\n", "sweep"),
    Case(
        "sweep-bad-backend-value",
        HEAD + "sweep:\n  backend: [pytorch, tgi]\n",
        "sweep.backend[1]",
    ),
    Case(
        "sweep-bad-precision-value",
        HEAD + "sweep:\n  precision: [float16, fp7]\n",
        "sweep.precision[1]",
    ),
    # ---- out-of-range values
    Case(
        "batch-size-zero-in-sweep",
        HEAD + "sweep:\n  pytorch.batch_size: [1, 2, 0]\n",
        "sweep.pytorch.batch_size[2]",
    ),
    Case(
        "gpu-memory-utilization-above-1",
        HEAD + "backend: vllm\nvllm: {gpu_memory_utilization: 1.5}\n",
        "vllm.gpu_memory_utilization",
    ),
    Case("negative-gpu", HEAD + "gpus: [-1]\n", "gpus"),
    Case("duplicate-gpus", HEAD + "gpus: [0, 0]\n", "gpus"),
    Case("baseline-too-short", HEAD + "baseline: {duration_s: 0}\n", "baseline.duration_s"),
    Case("sample-rate-zero", HEAD + "energy: {sample_rate_hz: 0}\n", "energy.sample_rate_hz"),
    Case("bad-energy-sampler", HEAD + "energy: {sampler: joulemeter}\n", "energy.sampler"),
    # ---- impossible combinations
    Case(
        "tp-times-pp-exceeds-gpus",
        HEAD + "backend: vllm\ngpus: [0, 1]\nvllm: {tensor_parallel_size: 2, "
        "pipeline_parallel_size: 2}\n",
        "vllm.tensor_parallel_size",
    ),
    Case(
        "tensorrt-tp-exceeds-gpus",
        HEAD + "backend: tensorrt\ntensorrt: {tensor_parallel_size: 2}\n",
        "tensorrt.tensor_parallel_size",
    ),
    Case(
        "flash-attention-float32",
        HEAD + "precision: float32\npytorch: {attn_implementation: flash_attention_2}\n",
        "pytorch.attn_implementation",
    ),
    Case(
        "fp8-quantization-float32",
        HEAD + "precision: float32\nbackend: vllm\nvllm: {quantization: fp8}\n",
        "vllm.quantization",
    ),
    Case(
        "tensorrt-quantization-float32",
        HEAD + "precision: float32\nbackend: tensorrt\ntensorrt: {quantization: int4_awq}\n",
        "tensorrt.quantization",
    ),
    Case(
        "synthetic-input-longer-than-max",
        HEAD + "max_input_tokens: 16\ndataset: {input_len: 32}\n",
        "dataset.input_len",
    ),
    Case(
        "synthetic-output-longer-than-max",
        HEAD + "max_output_tokens: 16\ndataset: {output_len: 32}\n",
        "dataset.output_len",
    ),
    Case(
        "batch-size-above-n-prompts",
        "model: tiny-llama\nload_format: dummy\nn_prompts: 4\npytorch: {batch_size: 8}\n",
        "pytorch.batch_size",
    ),
    Case(
        "enforce-eager-with-cudagraph-sizes",
        HEAD + "backend: vllm\nvllm: {enforce_eager: true, cudagraph_capture_sizes: [1, 2]}\n",
        "vllm.enforce_eager",
    ),
    Case(
        "dummy-builtin-jsonl-without-tokenizer",
        HEAD + "dataset: {source: jsonl, path: p.jsonl}\n",
        "tokenizer",
        files={"p.jsonl": '{"prompt": "hello"}\n'},
    ),
    # ---- chat datasets (format: chat): the file checked on the host, by line
    Case(
        "chat-line-not-json",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "c.jsonl:2: not JSON",
        files={**TOK, "c.jsonl": CHAT_LINE + "{oops\n"},
    ),
    Case(
        "chat-line-without-messages",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "c.jsonl:1: no non-empty list 'messages'",
        files={**TOK, "c.jsonl": '{"prompt": "hi"}\n'},
    ),
    Case(
        "chat-bad-role",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "messages[0].role",
        files={**TOK, "c.jsonl": '{"messages": [{"role": "bot", "content": "hi"}]}\n'},
    ),
    Case(
        "chat-bad-max-tokens",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "c.jsonl:1: max_tokens",
        files={**TOK, "c.jsonl": CHAT_LINE.replace("}]}", '}], "max_tokens": 0}')},
    ),
    Case(
        "chat-empty-file",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "c.jsonl' is empty",
        files={**TOK, "c.jsonl": "\n"},
    ),
    Case(
        "chat-path-is-a-directory",
        CHAT + "dataset: {source: jsonl, path: tok, format: chat}\n",
        "tok' is a directory, not a JSONL dataset",
        files=TOK,
    ),
    Case(
        "chat-tokenizer-without-template",
        HEAD + "tokenizer: ./plain\ndataset: {source: jsonl, path: c.jsonl, format: chat}\n",
        "dataset.format: chat needs a chat template",
        files={"plain/tokenizer_config.json": "{}", "c.jsonl": CHAT_LINE},
    ),
    Case(
        "turns-without-chat",
        CHAT + "dataset: {source: jsonl, path: c.jsonl, turns: each}\n",
        "dataset.turns",
        files={**TOK, "c.jsonl": '{"prompt": "hi"}\n'},
    ),
    Case(
        "max-model-len-too-short",
        HEAD + "backend: vllm\nmax_input_tokens: 512\nvllm: {max_model_len: 100}\n",
        "vllm.max_model_len",
    ),
    Case(
        "batched-tokens-below-num-seqs",
        HEAD + "backend: vllm\nvllm: {max_num_seqs: 64, max_num_batched_tokens: 32}\n",
        "vllm.max_num_batched_tokens",
    ),
    Case(
        "kv-quantization-without-quantization",
        HEAD + "backend: tensorrt\ntensorrt: {kv_cache_quantization: fp8}\n",
        "tensorrt.kv_cache_quantization",
    ),
    Case(
        "compile-with-bitsandbytes",
        HEAD + "pytorch: {torch_compile: true, quantization: bnb_4bit}\n",
        "pytorch.torch_compile",
    ),
    Case(
        "engine-args-override-precision",
        HEAD + "backend: vllm\nvllm: {engine_args: {dtype: half}}\n",
        "vllm.engine_args",
    ),
    Case(
        "do-sample-contradicts-temperature",
        HEAD + "decoder: {temperature: 0, do_sample: true}\n",
        "decoder.do_sample",
    ),
    Case(
        "convergence-window-above-max",
        HEAD + "warmup: {mode: convergence, window: 5, max_batches: 3}\n",
        "warmup.max_batches",
    ),
    # ---- missing files
    Case(
        "missing-jsonl",
        HEAD + "tokenizer: gpt2\ndataset: {source: jsonl, path: nope.jsonl}\n",
        "dataset.path",
    ),
    Case("missing-model-dir", "model: ./no-such-model\nload_format: dummy\n", "model"),
    Case(
        "model-dir-without-config-json",
        "model: ./empty-model/\nload_format: dummy\n",
        "model",
        files={"empty-model/README": "no config.json here\n"},
    ),
    Case("missing-base", "base: nope.yaml\n" + HEAD, "base: 'nope.yaml' not found"),
    Case("base-not-a-path", "base: 5\n" + HEAD, "base: must be a file path"),
    Case(
        "base-cycle",
        "base: other.yaml\n" + HEAD,
        "'base:' files form a cycle",
        files={"other.yaml": "base: study.yaml\n"},
    ),
    # ---- execution, runner, images
    Case("zero-cycles", HEAD + "execution: {n_cycles: 0}\n", "execution.n_cycles"),
    Case("negative-gap", HEAD + "execution: {config_gap_s: -1}\n", "execution.config_gap_s"),
    Case("execution-not-mapping", HEAD + "execution: [1]\n", "execution: must be a mapping"),
    Case("bad-cycle-order", HEAD + "execution: {cycle_order: random}\n", "execution.cycle_order"),
    Case("unknown-images-backend", HEAD + "images: {trtllm: my/trt:1}\n", "images.trtllm"),
    Case("bad-runner", HEAD + "runner: kubernetes\n", "runner"),
    Case("bad-pull-policy", HEAD + "pull_policy: sometimes\n", "pull_policy"),
    Case("cuda-major-too-old", HEAD + "cuda_major: 3\n", "cuda_major"),
    Case("bad-network-mode", HEAD + "docker: {network_mode: weird}\n", "docker.network_mode"),
    Case("empty-study-name", HEAD + "name: ''\n", "name"),
]


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    """Issue 2 asks for at least 30 bad inputs; this corpus keeps at least 35, each unique."""
    assert len(CASES) >= 35
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_study_exits_2_and_names_the_key(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llem run BAD --dry-run`` exits 2 with the file and key path, and no traceback."""
    for name, text in case.files.items():
        side = tmp_path / name
        side.parent.mkdir(parents=True, exist_ok=True)
        side.write_text(text, encoding="utf-8")
    path = tmp_path / f"study{case.suffix}"
    path.write_text(textwrap.dedent(case.text), encoding="utf-8")

    code = main(["run", str(path), "--dry-run"])
    out = capsys.readouterr()
    text = out.out + out.err

    assert code == 2, text
    assert str(path) in text, text
    assert case.key in text, text
    assert "Traceback" not in text
    assert "internal error" not in text
    assert out.out == ""  # no plan is printed for a bad study


def test_every_unknown_key_of_a_file_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three misspelt keys in different places give three lines, each with its key path."""
    path = tmp_path / "study.yaml"
    path.write_text(
        HEAD + "n_promts: 4\nsweep:\n  precison: [float16]\nexperiments:\n  - {modle: x}\n",
        encoding="utf-8",
    )
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "3 problems" in err
    for key in ("n_promts", "sweep.precison", "experiments[0].modle"):
        assert key in err


def test_every_bad_value_of_a_file_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad values in two sweep points and one entry are all listed, not just the first."""
    path = tmp_path / "study.yaml"
    path.write_text(
        HEAD + "sweep:\n  pytorch.batch_size: [0, 1]\n  precision: [float16, fp7]\n"
        "experiments:\n  - {n_prompts: 0}\n",
        encoding="utf-8",
    )
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for key in ("sweep.pytorch.batch_size[0]", "sweep.precision[1]", "experiments[0].n_prompts"):
        assert key in err


def test_verbose_shows_the_traceback_of_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -v a user error still exits 2 but prints the traceback for debugging."""
    path = tmp_path / "study.yaml"
    path.write_text(HEAD + "n_promts: 4\n", encoding="utf-8")
    assert main(["run", str(path), "--dry-run", "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err
