"""Chat datasets: conversations rendered with the model's chat template, each turn a request.

The proof runs the real CLI as a person does, ``llem run study.yaml --runner local`` from a
working directory, on a tiny Llama checkpoint built on the spot whose tokenizer carries a real
Jinja chat template (no download), and reads ``requests.parquet`` and ``result.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.analysis.conftest import run_llem
from tests.harness.conftest import make_config

from llenergymeasure_contract.chat import Conversation
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_harness.testing.tiny_checkpoint import (
    TINY_CHAT_TEMPLATE,
    build_tiny_checkpoint,
)

pytest.importorskip("transformers")

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
CONVERSATIONS: list[dict[str, Any]] = [
    {
        "messages": [
            {"role": "system", "content": "answer briefly"},
            {"role": "user", "content": "energy per token"},
            {"role": "assistant", "content": "a server answers requests"},
            {"role": "user", "content": "as they arrive"},
            {"role": "assistant", "content": "the recorded answer is never sent"},
        ],
        "max_tokens": 3,
    },
    {"messages": [{"role": "user", "content": LONG}]},
]
MAX_INPUT = 100
MAX_OUTPUT = 5


def chat_turns() -> list[list[dict[str, str]]]:
    """The three requests ``turns: each`` must build, by hand: each user turn with its history."""
    a = CONVERSATIONS[0]["messages"]
    return [a[:2], a[:4], CONVERSATIONS[1]["messages"]]


@pytest.mark.torch
def test_chat_turns_rendered_with_the_template_through_the_cli(tmp_path: Path) -> None:
    """``llem run --runner local`` on a chat JSONL: every user turn is a request carrying its
    history, its prompt is the chat template's rendering (cut from the left to
    max_input_tokens, and counted), and a conversation's max_tokens caps its outputs."""
    from transformers import AutoTokenizer

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", chat_template=TINY_CHAT_TEMPLATE)
    (tmp_path / "chat.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in CONVERSATIONS), encoding="utf-8"
    )
    study = {
        "name": "chat",
        "model": "./ckpt",
        "precision": "float32",
        "n_prompts": 3,
        "max_input_tokens": MAX_INPUT,
        "max_output_tokens": MAX_OUTPUT,
        "dataset": {"source": "jsonl", "path": "chat.jsonl", "format": "chat", "turns": "each"},
        "warmup": {"n_batches": 1},
        "baseline": {"enabled": False},
        "gpus": [],
        "pytorch": {"batch_size": 1},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study), encoding="utf-8")

    proc = run_llem("run", "study.yaml", "--runner", "local", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    tok = AutoTokenizer.from_pretrained(ckpt)
    full = [
        len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])
        for m in chat_turns()
    ]
    assert full[0] < full[1] <= MAX_INPUT < full[2]  # history grows; the long one is cut
    (run_dir,) = [p for p in (tmp_path / "results").rglob("result.json")]
    import pyarrow.parquet as pq

    rows = pq.read_table(run_dir.parent / "requests.parquet").to_pylist()
    rows.sort(key=lambda r: r["request_id"])
    assert [r["input_tokens"] for r in rows] == [min(n, MAX_INPUT) for n in full]
    assert [r["output_tokens"] for r in rows] == [3, 3, MAX_OUTPUT]
    result = json.loads(run_dir.read_text(encoding="utf-8"))
    assert result["input_truncation"] == {
        "side": "left",
        "truncated_requests": 1,
        "truncated_input_tokens": full[2] - MAX_INPUT,
    }


class _Tok:
    """A stand-in tokenizer: one token per character of ``role: content`` lines."""

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return [ord(c) for c in text]

    def decode(self, ids: list[int], **_: Any) -> str:
        return "".join(chr(i) for i in ids)


def test_left_truncation_keeps_the_end_of_the_conversation() -> None:
    """A prompt over max_input_tokens loses its start: the last question is what the model sees."""
    from llenergymeasure_harness.prompts import chat_requests

    cfg = make_config(
        dataset={"source": "jsonl", "path": "/x.jsonl", "format": "chat"},
        tokenizer="tok",
        n_prompts=1,
        pytorch={"batch_size": 1},
        max_input_tokens=10,
    )
    conv = Conversation(messages=({"role": "user", "content": "a long question?"},))
    (req,) = chat_requests(cfg, [conv], _Tok())
    assert req.prompt_text == "question?\n"
    assert req.truncated_input_tokens == len("user: a long question?\n") - 10


def test_last_turn_sends_only_the_final_user_message_with_history() -> None:
    """``turns: last`` gives one request per conversation: history up to its last user turn,
    without the recorded answer; max_tokens above max_output_tokens is capped."""
    from llenergymeasure_harness.prompts import chat_requests

    cfg = make_config(
        dataset={"source": "jsonl", "path": "/x.jsonl", "format": "chat"},
        tokenizer="tok",
        n_prompts=2,
        max_input_tokens=512,
        max_output_tokens=8,
    )
    msgs = tuple(CONVERSATIONS[0]["messages"])
    reqs = chat_requests(cfg, [Conversation(messages=msgs, max_tokens=100)], _Tok())
    assert [r.max_new_tokens for r in reqs] == [8, 8]  # capped, and cycled to n_prompts
    assert reqs[0].prompt_text is not None
    assert reqs[0].prompt_text.startswith("system: answer briefly\n")
    assert reqs[0].prompt_text.endswith("user: as they arrive\n")
    assert "never sent" not in reqs[0].prompt_text


def test_hub_chat_column_is_read_as_conversations(monkeypatch: pytest.MonkeyPatch) -> None:
    """``source: hub, format: chat`` reads a message-list column (no network: the loader is a
    local ``datasets.Dataset``) and expands each turn with its history."""
    datasets = pytest.importorskip("datasets")
    from llenergymeasure_harness import prompts

    rows = {"conversation_a": [CONVERSATIONS[0]["messages"]], "id": ["x"]}
    seen: dict[str, Any] = {}

    def load_dataset(name: str, subset: str | None, split: str) -> Any:
        seen.update(name=name, split=split)
        return datasets.Dataset.from_dict(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = make_config(
        dataset={
            "source": "hub",
            "name": "org/arena",
            "format": "chat",
            "messages_field": "conversation_a",
            "turns": "each",
        },
        tokenizer="tok",
        n_prompts=2,
        max_input_tokens=512,
    )
    reqs = prompts.build_requests(cfg, chat_tokenizer=_Tok())
    assert seen == {"name": "org/arena", "split": "train[:2]"}
    assert [r.prompt_text for r in reqs] == [
        _Tok().decode(_Tok().apply_chat_template(m)) for m in chat_turns()[:2]
    ]
    bad = make_config(
        dataset={"source": "hub", "name": "org/arena", "format": "chat"},
        tokenizer="tok",
        n_prompts=1,
        pytorch={"batch_size": 1},
    )
    with pytest.raises(ConfigError, match="messages_field"):
        prompts.build_requests(bad, chat_tokenizer=_Tok())


def test_a_tokenizer_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    """A model with no chat template stops the run before loading, naming dataset.format."""
    from llenergymeasure_harness.prompts import load_chat_tokenizer

    ckpt = build_tiny_checkpoint(tmp_path / "plain")
    cfg = make_config(
        dataset={"source": "jsonl", "path": "/x.jsonl", "format": "chat"},
        tokenizer=str(ckpt),
    )
    with pytest.raises(ConfigError, match=r"dataset\.format: chat needs a chat template"):
        load_chat_tokenizer(cfg)


@pytest.mark.parametrize("fmt", ["text", "chat"])
def test_dataset_config_round_trips_through_json(fmt: str) -> None:
    """A dumped config (defaults written out, as the host hands it to the harness) validates
    again, for text and chat datasets alike."""
    from llenergymeasure_contract.experiment import ExperimentConfig

    cfg = make_config(dataset={"source": "jsonl", "path": "/x.jsonl", "format": fmt}, tokenizer="t")
    assert ExperimentConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_chat_turns_on_the_fake_vllm_engine(tmp_path: Path) -> None:
    """On vLLM (fake engine) each turn's answer is its conversation's max_tokens (capped), the
    prompts are the template's rendering, and result.json carries the truncation count and
    both steady-state windows."""
    from transformers import AutoTokenizer

    from llenergymeasure_contract.env import HarnessEnv
    from llenergymeasure_contract.experiment import ExperimentConfig
    from llenergymeasure_harness.backends.vllm import VLLMBackend
    from llenergymeasure_harness.experiment import Deps, run_experiment
    from llenergymeasure_harness.testing.engines import FakeVLLM, FakeVLLMBehaviour
    from llenergymeasure_harness.testing.fake_nvml import FakeNvml

    ckpt = build_tiny_checkpoint(tmp_path / "ckpt", chat_template=TINY_CHAT_TEMPLATE)
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS), encoding="utf-8")
    fake = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.01))
    clock = fake.behaviour.clock
    config = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        tokenizer=str(ckpt),
        backend="vllm",
        n_prompts=30,
        max_input_tokens=MAX_INPUT,
        max_output_tokens=MAX_OUTPUT,
        dataset={"source": "jsonl", "path": str(data), "format": "chat", "turns": "each"},
        baseline={"enabled": False},
        vllm={"max_num_seqs": 4},
    )
    env = HarnessEnv(config=config, run_id="r", results_dir=str(tmp_path / "out"))
    deps = Deps(
        open_nvml=lambda: FakeNvml(1, clock=clock, power_w=300.0),
        make_backend=lambda name: VLLMBackend(clock=clock, workdir=tmp_path / "w"),
        clock=clock,
        sleep=clock.advance,
        cuda_visible=None,
    )
    with fake.installed():
        run_experiment(env, deps)

    import pyarrow.parquet as pq

    out = tmp_path / "out"
    rows = sorted(
        pq.read_table(out / "requests.parquet").to_pylist(), key=lambda r: r["request_id"]
    )
    tok = AutoTokenizer.from_pretrained(ckpt)
    full = [
        len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])
        for m in chat_turns()
    ]
    assert [r["input_tokens"] for r in rows] == [min(full[i % 3], MAX_INPUT) for i in range(30)]
    assert [r["output_tokens"] for r in rows] == [[3, 3, MAX_OUTPUT][i % 3] for i in range(30)]
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["input_truncation"]["truncated_requests"] == 10
    assert result["steady_state"] is not None
    assert result["steady_state_mlenergy"]["max_num_seqs"] == 4
