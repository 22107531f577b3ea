"""Backend-independent prompt building and the metric definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.harness.conftest import make_config

from llenergymeasure.errors import ConfigError
from llenergymeasure_harness.backends.base import RequestRecord
from llenergymeasure_harness.metrics import efficiency, latency, request_columns, stats, throughput
from llenergymeasure_harness.prompts import SYNTHETIC_LOW, build_requests


def test_synthetic_prompts_are_seeded_and_shaped() -> None:
    """Same config, same ids; exact lengths; ids inside the vocabulary; a new seed differs."""
    cfg = make_config(dataset={"input_len": 12, "output_len": 3})
    a, b = build_requests(cfg), build_requests(cfg)
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert len(a) == 8
    assert all(len(r.prompt_token_ids) == 12 and r.max_new_tokens == 3 for r in a)
    assert all(SYNTHETIC_LOW <= t < 2048 for r in a for t in r.prompt_token_ids)  # tiny-llama
    other = build_requests(make_config(dataset={"input_len": 12}, random_seed=7))
    assert other[0].prompt_token_ids != a[0].prompt_token_ids


def test_synthetic_needs_a_known_vocabulary() -> None:
    """A hub id that is not built in needs the vocab size from the loaded model."""
    cfg = make_config(model="some-org/unknown-model")
    with pytest.raises(ConfigError):
        build_requests(cfg)
    assert len(build_requests(cfg, vocab_size=500)) == 8


def test_jsonl_prompts_tokenized_truncated_and_cycled(tmp_path: Path) -> None:
    """JSONL text is tokenized, cut to max_input_tokens, and cycled to n_prompts."""
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": "a " * n}) for n in (3, 40)) + "\n\n")
    cfg = make_config(dataset={"source": "jsonl", "path": str(f)}, tokenizer="tok")
    reqs = build_requests(cfg, tokenize=lambda s: list(range(len(s.split()))))
    assert [len(r.prompt_token_ids) for r in reqs[:4]] == [3, 16, 3, 16]
    assert reqs[0].prompt_text == "a a a "


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    """Bad JSON or a missing field is a ConfigError naming file and line."""
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    cfg = make_config(dataset={"source": "jsonl", "path": str(f)}, tokenizer="tok")
    with pytest.raises(ConfigError, match=r"p.jsonl:2"):
        build_requests(cfg, tokenize=lambda s: [1])
    missing = make_config(
        dataset={"source": "jsonl", "path": str(tmp_path / "nope")}, tokenizer="tok"
    )
    with pytest.raises(ConfigError):
        build_requests(missing, tokenize=lambda s: [1])


def _rec(i: int, submit: float, times: list[float], inp: int = 10) -> RequestRecord:
    return RequestRecord(i, inp, len(times), submit, times[-1], times[0], times, "length")


def test_latency_definitions() -> None:
    """TTFT from submit, ITL pooled gaps, TPOT per request, e2e to the last token."""
    recs = [_rec(0, 0.0, [1.0, 1.5, 2.0]), _rec(1, 0.0, [2.0, 4.0])]
    lat = latency(recs)
    assert lat["ttft_s"]["mean"] == pytest.approx(1.5)
    assert sorted([0.5, 0.5, 2.0]) == [0.5, 0.5, 2.0]
    assert lat["itl_s"]["count"] == 3 and lat["itl_s"]["max"] == pytest.approx(2.0)
    assert lat["tpot_s"]["min"] == pytest.approx(0.5)
    assert lat["e2e_s"]["max"] == pytest.approx(4.0)


def test_stats_percentiles_nearest_rank() -> None:
    """p50/p90/p99 use nearest rank; empty input gives None."""
    s = stats([float(x) for x in range(1, 101)])
    assert (s["p50"], s["p90"], s["p99"], s["min"], s["max"]) == (50.0, 90.0, 99.0, 1.0, 100.0)
    assert stats([]) is None


def test_throughput_and_efficiency() -> None:
    """Rates divide by the window; J/x is None when energy is None, never 0."""
    recs = [_rec(0, 0.0, [1.0, 2.0]), _rec(1, 0.0, [1.0, 2.0])]
    tp = throughput(recs, 2.0)
    assert tp["output_tokens_per_s"] == 2.0 and tp["requests_per_s"] == 1.0
    assert tp["total_tokens"] == 24
    eff = efficiency(48.0, 24.0, tp)
    assert eff["j_per_output_token"] == 12.0 and eff["j_per_token"] == 2.0
    assert eff["net_j_per_request"] == 12.0
    assert all(v is None for v in efficiency(None, None, tp).values())


def test_request_columns_carry_raw_timestamps() -> None:
    """requests.parquet columns hold ids, counts, TTFT and every token time."""
    cols = request_columns([_rec(3, 0.5, [1.0, 1.5])])
    assert cols["request_id"] == [3]
    assert cols["ttft_s"] == [0.5]
    assert cols["token_times_s"] == [[1.0, 1.5]]


def test_hub_dataset_is_loaded_lazily_through_datasets(monkeypatch) -> None:
    """The hub source asks `datasets` for the first n_prompts rows of the split."""
    import sys
    import types

    seen = {}

    class FakeData:
        column_names = ("text",)

        def __getitem__(self, key):
            return ["hello world", "second prompt here"]

    def load_dataset(name, subset, split):
        seen.update(name=name, subset=subset, split=split)
        return FakeData()

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    cfg = make_config(dataset={"source": "hub", "name": "org/ds", "split": "test"}, tokenizer="t")
    reqs = build_requests(cfg, tokenize=lambda s: [1] * len(s.split()))
    assert seen == {"name": "org/ds", "subset": None, "split": "test[:8]"}
    assert [len(r.prompt_token_ids) for r in reqs[:2]] == [2, 3]
    bad = make_config(dataset={"source": "hub", "name": "o/d", "text_field": "q"}, tokenizer="t")
    with pytest.raises(ConfigError, match="no column"):
        build_requests(bad, tokenize=lambda s: [1])
