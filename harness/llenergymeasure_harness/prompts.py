"""Prompt building, independent of any backend: every backend gets the same requests.

* ``synthetic``: seeded random token ids (``random.Random(random_seed)``) drawn from
  ``[SYNTHETIC_LOW, vocab_size)``; each request's prompt length and ``max_new_tokens`` are
  ``input_len`` / ``output_len``, an integer or a seeded distribution
  (:mod:`llenergymeasure_harness.lengths`). No tokenizer needed; the same config gives the
  same ids and lengths on vLLM, TensorRT-LLM and PyTorch.
* ``jsonl``: ``text_field`` of each line, tokenized and truncated to ``max_input_tokens``
  (the end is cut).
* ``hub``: a Hugging Face dataset column (``datasets`` is imported only here, only then).
* ``format: chat`` (either source): conversations (:mod:`llenergymeasure_contract.chat`), each
  user turn (``turns: each``) or the last (``turns: last``) one request with its history,
  rendered with the tokenizer's chat template (``add_generation_prompt=True``) and cut from the
  left to ``max_input_tokens`` (the end of the conversation, the question, is what stays). A
  conversation's ``max_tokens`` is its requests' output cap (never above ``max_output_tokens``).

Text datasets with fewer rows than ``n_prompts`` are cycled. Every request asks for
``max_output_tokens`` new tokens unless its conversation says fewer. Each request records
how many prompt tokens were cut (``GenerationRequest.truncated_input_tokens``).

Warmup and the prefill-only pass never reuse measured prompts: :func:`distinct_requests` gives
requests of the same shapes (lengths, ``max_new_tokens``) whose first token differs from the
first token of every measured prompt. An engine's prefix cache keys its blocks by a hash chained
from the first token, so no block of such a request can match a block of a measured one, and a
measured prefill never finds work that warmup already did (vLLM enables prefix caching by
default; TensorRT-LLM has KV-cache reuse).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llenergymeasure_contract.chat import (
    ChatTurn,
    Conversation,
    expand_turns,
    parse_conversation,
    read_chat_jsonl,
    read_jsonl_objects,
)
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import (
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
    SyntheticDataset,
)
from llenergymeasure_contract.windows import InputTruncation
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.lengths import request_lengths
from llenergymeasure_harness.lora import assign_adapters

#: Lowest synthetic token id: skips the special tokens most vocabularies put first.
SYNTHETIC_LOW = 100

Tokenize = Callable[[str], list[int]]


def architecture_source(config: ExperimentConfig) -> str:
    """Where the model's ``config.json`` is read from: ``model``, or, for a backend whose model
    is the name a server serves (``BackendSpec.model_is_served_name``), its ``tokenizer``
    folder when that is local (the container reads it from the mount)."""
    from llenergymeasure_contract.architecture import is_local_path
    from llenergymeasure_contract.registry import REGISTRY

    if (
        REGISTRY.get(config.backend).model_is_served_name
        and config.tokenizer is not None
        and is_local_path(config.tokenizer)
    ):
        return config.tokenizer
    return config.model


def vocab_size_for(config: ExperimentConfig) -> int | None:
    """The model's vocabulary size from its architecture, when known without the network."""
    from llenergymeasure_contract.architecture import resolve_architecture

    arch = resolve_architecture(architecture_source(config))
    if arch is None:
        return None
    return int(arch.hf_config.get("vocab_size") or 0) or None


def synthetic_requests(config: ExperimentConfig, vocab_size: int) -> list[GenerationRequest]:
    """Seeded random prompts; each request's prompt and output length from the dataset's
    length specs (:func:`~llenergymeasure_harness.lengths.request_lengths`)."""
    if vocab_size <= SYNTHETIC_LOW:
        raise ConfigError(f"vocab_size {vocab_size} too small for synthetic prompts")
    rng = random.Random(config.random_seed)
    n_in = request_lengths(config, "input_len")
    n_out = request_lengths(config, "output_len")
    return [
        GenerationRequest(
            request_id=i,
            prompt_token_ids=[rng.randrange(SYNTHETIC_LOW, vocab_size) for _ in range(n_in[i])],
            max_new_tokens=n_out[i],
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


def _jsonl_path(ds: JsonlDataset, base_dir: Path | None) -> Path:
    path = Path(ds.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def _jsonl_texts(ds: JsonlDataset, base_dir: Path | None) -> list[str]:
    path = _jsonl_path(ds, base_dir)
    texts: list[str] = []
    for n, obj in read_jsonl_objects(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(ds.text_field), str):
            raise ConfigError(f"{path}:{n}: no string field {ds.text_field!r}")
        texts.append(obj[ds.text_field])
    return texts


def _hub_rows(ds: HubDataset, n: int, column: str) -> list[Any]:
    """The first ``n`` values of a hub dataset column (``datasets`` imported only here)."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "dataset source 'hub' needs the datasets package", hint="pip install datasets"
        ) from exc
    split = f"{ds.split}[:{n}]"
    data: Any = datasets.load_dataset(ds.name, ds.subset, split=split)
    if column not in data.column_names:
        key = "messages_field" if ds.format == "chat" else "text_field"
        raise ConfigError(
            f"hub dataset {ds.name} has no column {column!r} (has {data.column_names})",
            hint=f"set dataset.{key} to one of them",
        )
    return list(data[column])


def _hub_texts(ds: HubDataset, n: int) -> list[str]:
    return [str(t) for t in _hub_rows(ds, n, ds.text_field)]


def _hub_conversations(ds: HubDataset, n: int) -> list[Conversation]:
    """Conversations from a hub column of message lists (e.g. lmarena's ``conversation_a``)."""
    field = ds.messages_field
    return [
        parse_conversation({field: row}, f"hub dataset {ds.name} row {i}", field)
        for i, row in enumerate(_hub_rows(ds, n, field))
    ]


def text_requests(
    config: ExperimentConfig, texts: list[str], tokenize: Tokenize
) -> list[GenerationRequest]:
    if not texts:
        raise ConfigError("the dataset holds no prompts")
    n_out = config.resolved_output_len()
    out: list[GenerationRequest] = []
    for i in range(config.n_prompts):
        text = texts[i % len(texts)]
        full = tokenize(text)
        ids = full[: config.max_input_tokens]
        out.append(
            GenerationRequest(
                request_id=i,
                prompt_token_ids=ids,
                max_new_tokens=n_out,
                prompt_text=text,
                truncated_input_tokens=len(full) - len(ids),
            )
        )
    return out


def render_chat(tokenizer: Any, messages: tuple[dict[str, str], ...]) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template, ready for the
    model's answer (``add_generation_prompt=True``; the template places any BOS itself)."""
    encoded = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=True
    )
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    return [int(t) for t in ids]


def chat_requests(
    config: ExperimentConfig,
    conversations: list[Conversation],
    tokenizer: Any,
) -> list[GenerationRequest]:
    """One request per turn (``dataset.turns``), cycled to ``n_prompts``, cut from the left.

    Args:
        config: The experiment (``dataset.turns``, ``max_input_tokens``, the output cap).
        conversations: Checked conversations (``llenergymeasure_contract.chat``).
        tokenizer: A ``transformers`` tokenizer with a chat template.
    """
    mode = "last" if isinstance(config.dataset, SyntheticDataset) else config.dataset.turns
    turns: list[ChatTurn] = [t for c in conversations for t in expand_turns(c, mode)]
    if not turns:
        raise ConfigError("the dataset holds no conversations")
    cap = config.resolved_output_len()
    keep = config.max_input_tokens
    out: list[GenerationRequest] = []
    # Rendered once per turn: (kept ids, their text, tokens cut from the left).
    rendered: dict[int, tuple[list[int], str, int]] = {}
    for i in range(config.n_prompts):
        j = i % len(turns)
        if j not in rendered:
            full = render_chat(tokenizer, turns[j].messages)
            ids = full[-keep:] if len(full) > keep else full
            text: str = tokenizer.decode(ids, skip_special_tokens=False)
            rendered[j] = (ids, text, len(full) - len(ids))
        ids, text, cut = rendered[j]
        asked = turns[j].max_tokens
        out.append(
            GenerationRequest(
                request_id=i,
                prompt_token_ids=list(ids),
                max_new_tokens=min(asked, cap) if asked is not None else cap,
                prompt_text=text,
                truncated_input_tokens=cut,
            )
        )
    return out


def input_truncation(
    config: ExperimentConfig, requests: list[GenerationRequest]
) -> InputTruncation | None:
    """How many prompts of a text or chat dataset were cut, and by how many tokens (None for
    synthetic prompts, which are built to length)."""
    ds = config.dataset
    if isinstance(ds, SyntheticDataset):
        return None
    cut = [r.truncated_input_tokens for r in requests if r.truncated_input_tokens > 0]
    return InputTruncation(
        side="left" if ds.format == "chat" else "right",
        truncated_requests=len(cut),
        truncated_input_tokens=sum(cut),
    )


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


def load_chat_tokenizer(config: ExperimentConfig) -> Any:
    """The ``transformers`` tokenizer of the experiment, checked to have a chat template.

    Raises:
        ConfigError: it has none (``dataset.format: chat`` needs one).
    """
    from transformers import AutoTokenizer

    name = config.tokenizer or config.model
    tok = AutoTokenizer.from_pretrained(
        name, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            f"dataset.format: chat needs a chat template, and the tokenizer of {name!r} has none",
            hint="use an instruct/chat model's tokenizer (tokenizer:), or dataset.format: text",
        )
    return tok


def build_requests(
    config: ExperimentConfig,
    *,
    vocab_size: int | None = None,
    tokenize: Tokenize | None = None,
    chat_tokenizer: Any = None,
    base_dir: Path | None = None,
) -> list[GenerationRequest]:
    """The experiment's requests, identical for every backend.

    Args:
        config: The experiment.
        vocab_size: For synthetic prompts; default from the architecture.
        tokenize: For text prompts; default ``load_tokenizer(config)``.
        chat_tokenizer: For ``format: chat``; default ``load_chat_tokenizer(config)``.
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
    if ds.format == "chat":
        conversations = (
            read_chat_jsonl(_jsonl_path(ds, base_dir), ds.messages_field)
            if isinstance(ds, JsonlDataset)
            else _hub_conversations(ds, config.n_prompts)
        )
        chats = chat_requests(config, conversations, chat_tokenizer or load_chat_tokenizer(config))
        return assign_adapters(config, chats)
    texts = (
        _jsonl_texts(ds, base_dir)
        if isinstance(ds, JsonlDataset)
        else _hub_texts(ds, config.n_prompts)
    )
    return assign_adapters(config, text_requests(config, texts, tokenize or load_tokenizer(config)))
