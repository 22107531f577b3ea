"""Prompt building, independent of any backend: every backend gets the same requests.

* ``synthetic``: seeded random token ids (``random.Random(random_seed)``), exactly
  ``resolved_input_len()`` tokens each, drawn from ``[SYNTHETIC_LOW, vocab_size)``. No
  tokenizer needed; the same config gives the same ids on vLLM, TensorRT-LLM and PyTorch.
* ``jsonl``: ``text_field`` of each line, tokenized and truncated to ``max_input_tokens``.
* ``hub``: a Hugging Face dataset column (``datasets`` is imported only here, only then).

Text datasets with fewer rows than ``n_prompts`` are cycled. Every request asks for
``resolved_output_len()`` new tokens.

Warmup and the prefill-only pass never reuse measured prompts: :func:`distinct_requests` gives
requests of the same shapes (lengths, ``max_new_tokens``) whose first token differs from the
first token of every measured prompt. An engine's prefix cache keys its blocks by a hash chained
from the first token, so no block of such a request can match a block of a measured one, and a
measured prefill never finds work that warmup already did (vLLM enables prefix caching by
default; TensorRT-LLM has KV-cache reuse).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import (
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
    SyntheticDataset,
)
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.lora import assign_adapters

#: Lowest synthetic token id: skips the special tokens most vocabularies put first.
SYNTHETIC_LOW = 100

Tokenize = Callable[[str], list[int]]


def vocab_size_for(config: ExperimentConfig) -> int | None:
    """The model's vocabulary size from its architecture, when known without the network."""
    from llenergymeasure_contract.architecture import resolve_architecture

    arch = resolve_architecture(config.model)
    if arch is None:
        return None
    return int(arch.hf_config.get("vocab_size") or 0) or None


def synthetic_requests(config: ExperimentConfig, vocab_size: int) -> list[GenerationRequest]:
    if vocab_size <= SYNTHETIC_LOW:
        raise ConfigError(f"vocab_size {vocab_size} too small for synthetic prompts")
    rng = random.Random(config.random_seed)
    n_in = config.resolved_input_len()
    n_out = config.resolved_output_len()
    return [
        GenerationRequest(
            request_id=i,
            prompt_token_ids=[rng.randrange(SYNTHETIC_LOW, vocab_size) for _ in range(n_in)],
            max_new_tokens=n_out,
        )
        for i in range(config.n_prompts)
    ]


#: Seed offsets of the request families that must not share prefixes with measured prompts.
FAMILY_SEEDS = {"warmup": 0x5EED_0001, "prefill_pass": 0x5EED_0002}


def distinct_requests(
    measured: list[GenerationRequest],
    family: str,
    *,
    random_seed: int,
    vocab_size: int | None = None,
    max_new_tokens: int | None = None,
) -> list[GenerationRequest]:
    """Requests with the shapes of ``measured`` but no token prefix in common with any of them.

    Each request keeps its length and ``max_new_tokens`` (or ``max_new_tokens`` when given: the
    prefill-only pass asks for 1); its ids are drawn from a seeded stream of their own (one per
    ``family``), and its first token is one that starts no measured prompt. Request ids stay
    the same so a backend's bookkeeping is unchanged.

    Args:
        measured: The measured run's requests.
        family: ``"warmup"`` or ``"prefill_pass"`` (each has its own seed, so the families do
            not share prefixes with each other either, beyond chance).
        random_seed: The experiment's seed.
        vocab_size: Token ids are drawn below it; default one past the largest measured id
            (every id below that is a valid token of the measured prompts' tokenizer).
        max_new_tokens: Override for every request.

    Raises:
        ConfigError: the vocabulary has no token id that starts no measured prompt.
    """
    if not measured:
        return []
    bound = vocab_size or (max(max(r.prompt_token_ids, default=0) for r in measured) + 1)
    low = SYNTHETIC_LOW if bound > SYNTHETIC_LOW + 1 else 0
    taken = {r.prompt_token_ids[0] for r in measured if r.prompt_token_ids}
    free = [t for t in range(low, min(bound, low + len(taken) + 64)) if t not in taken]
    if not free:
        raise ConfigError(
            f"no token id below {bound} starts no measured prompt; cannot build {family} "
            "prompts that share no prefix with the measured ones"
        )
    rng = random.Random(random_seed ^ FAMILY_SEEDS[family])
    out: list[GenerationRequest] = []
    for r in measured:
        n = len(r.prompt_token_ids)
        ids = [rng.randrange(low, bound) for _ in range(n)]
        if ids:
            ids[0] = free[rng.randrange(len(free))]
        out.append(
            GenerationRequest(
                request_id=r.request_id,
                prompt_token_ids=ids,
                max_new_tokens=r.max_new_tokens if max_new_tokens is None else max_new_tokens,
                adapter=r.adapter,  # warmup loads the adapters the measured run uses
            )
        )
    return out


def _jsonl_texts(ds: JsonlDataset, base_dir: Path | None) -> list[str]:
    path = Path(ds.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset {path}: {exc}") from exc
    texts: list[str] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not JSON: {exc}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get(ds.text_field), str):
            raise ConfigError(f"{path}:{n}: no string field {ds.text_field!r}")
        texts.append(obj[ds.text_field])
    return texts


def _hub_texts(ds: HubDataset, n: int) -> list[str]:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "dataset source 'hub' needs the datasets package", hint="pip install datasets"
        ) from exc
    split = f"{ds.split}[:{n}]"
    data: Any = datasets.load_dataset(ds.name, ds.subset, split=split)
    if ds.text_field not in data.column_names:
        raise ConfigError(
            f"hub dataset {ds.name} has no column {ds.text_field!r} (has {data.column_names})"
        )
    return [str(t) for t in data[ds.text_field]]


def text_requests(
    config: ExperimentConfig, texts: list[str], tokenize: Tokenize
) -> list[GenerationRequest]:
    if not texts:
        raise ConfigError("the dataset holds no prompts")
    n_out = config.resolved_output_len()
    out: list[GenerationRequest] = []
    for i in range(config.n_prompts):
        text = texts[i % len(texts)]
        ids = tokenize(text)[: config.max_input_tokens]
        out.append(
            GenerationRequest(
                request_id=i, prompt_token_ids=ids, max_new_tokens=n_out, prompt_text=text
            )
        )
    return out


def load_tokenizer(config: ExperimentConfig) -> Tokenize:
    """A tokenize function from ``transformers.AutoTokenizer`` (tokenizer or model id)."""
    from transformers import AutoTokenizer

    name = config.tokenizer or config.model
    tok = AutoTokenizer.from_pretrained(
        name, revision=config.revision, trust_remote_code=config.trust_remote_code
    )

    def tokenize(text: str) -> list[int]:
        return list(tok(text, add_special_tokens=True)["input_ids"])

    return tokenize


def build_requests(
    config: ExperimentConfig,
    *,
    vocab_size: int | None = None,
    tokenize: Tokenize | None = None,
    base_dir: Path | None = None,
) -> list[GenerationRequest]:
    """The experiment's requests, identical for every backend.

    Args:
        config: The experiment.
        vocab_size: For synthetic prompts; default from the architecture.
        tokenize: For text prompts; default ``load_tokenizer(config)``.
        base_dir: Relative JSONL paths are resolved against it.

    Raises:
        ConfigError: the dataset cannot be read or the vocabulary size is unknown.
    """
    ds = config.dataset
    if isinstance(ds, SyntheticDataset):
        vs = vocab_size or vocab_size_for(config)
        if vs is None:
            raise ConfigError(
                f"cannot tell the vocabulary size of {config.model!r} for synthetic prompts",
                hint="use a built-in architecture name or a local path with config.json",
            )
        return assign_adapters(config, synthetic_requests(config, vs))
    texts = (
        _jsonl_texts(ds, base_dir)
        if isinstance(ds, JsonlDataset)
        else _hub_texts(ds, config.n_prompts)
    )
    return assign_adapters(config, text_requests(config, texts, tokenize or load_tokenizer(config)))
