"""A chat dataset through the real Docker engine: the image renders each turn with the chat
template of a local tokenizer the host mounted, as the local runner does."""

from __future__ import annotations

import json

import pytest
from tests.harness.test_chat_dataset import CONVERSATIONS, MAX_INPUT, MAX_OUTPUT, chat_turns
from tests.journeys.conftest import Journey

from llenergymeasure_harness.testing.tiny_checkpoint import (
    TINY_CHAT_TEMPLATE,
    build_tiny_checkpoint,
)

pytestmark = [pytest.mark.docker, pytest.mark.torch]


def test_chat_turns_in_a_container(journey: Journey) -> None:
    """``llem run`` (Docker runner) on a chat JSONL and a local checkpoint with a chat template:
    requests.parquet has the template's token counts per turn, history included, the long
    conversation cut from the left and counted in result.json."""
    from transformers import AutoTokenizer

    ckpt = build_tiny_checkpoint(journey.cwd / "ckpt", chat_template=TINY_CHAT_TEMPLATE)
    (journey.cwd / "chat.jsonl").write_text(
        "".join(json.dumps(c) + "\n" for c in CONVERSATIONS), encoding="utf-8"
    )
    journey.write_study(
        model="./ckpt",
        load_format="auto",
        n_prompts=3,
        max_input_tokens=MAX_INPUT,
        max_output_tokens=MAX_OUTPUT,
        dataset={"source": "jsonl", "path": "chat.jsonl", "format": "chat", "turns": "each"},
        pytorch={"batch_size": 1},
        execution={"n_cycles": 1},
    )
    proc = journey.run("run", "study.yaml", "--runner", "docker", timeout_s=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    tok = AutoTokenizer.from_pretrained(ckpt)
    full = [
        len(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])
        for m in chat_turns()
    ]
    (result_file,) = journey.result_files()
    import pyarrow.parquet as pq

    rows = sorted(
        pq.read_table(result_file.parent / "requests.parquet").to_pylist(),
        key=lambda r: r["request_id"],
    )
    assert [r["input_tokens"] for r in rows] == [min(n, MAX_INPUT) for n in full]
    assert [r["output_tokens"] for r in rows] == [3, 3, MAX_OUTPUT]
    truncation = json.loads(result_file.read_text())["input_truncation"]
    assert truncation == {
        "side": "left",
        "truncated_requests": 1,
        "truncated_input_tokens": full[2] - MAX_INPUT,
    }
