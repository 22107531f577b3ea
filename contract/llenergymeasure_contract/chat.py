"""Conversations in the OpenAI chat format: parsing, checks and expansion into requests.

One definition shared by the host (``llem`` checks a ``format: chat`` JSONL file when the study
loads, exit 2 naming the file and line) and the harness (which renders each request with the
model's chat template). Pure Python, no tokenizer: rendering and truncation live in
``llenergymeasure_harness.prompts``.

A line of a chat JSONL file::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."},
                  {"role": "user", "content": "..."}],
     "max_tokens": 512}

``max_tokens`` is optional (the experiment's ``max_output_tokens`` otherwise, and never more).
:func:`expand_turns` turns a conversation into requests: ``last`` gives one request, the history
up to its last user message; ``each`` gives one per user message, each carrying the history up
to that message, as the ML.ENERGY benchmark's ``lm-arena-chat`` workload does
(ml-energy/benchmark ``mlenergy/benchmark/llm/datasets.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llenergymeasure_contract.errors import ConfigError

#: Roles a message may have.
CHAT_ROLES = ("system", "user", "assistant")

Turns = Literal["last", "each"]


@dataclass(frozen=True)
class Conversation:
    """One conversation: its messages (role, content) and an optional output cap.

    Attributes:
        messages: ``({"role": ..., "content": ...}, ...)`` in order.
        max_tokens: The file's per-conversation ``max_tokens``, or None.
    """

    messages: tuple[dict[str, str], ...]
    max_tokens: int | None = None


@dataclass(frozen=True)
class ChatTurn:
    """One request built from a conversation: the history up to and including a user message."""

    messages: tuple[dict[str, str], ...]
    max_tokens: int | None = None


def parse_conversation(obj: Any, where: str, messages_field: str = "messages") -> Conversation:
    """Check one parsed row and return it as a :class:`Conversation`.

    Args:
        obj: The row: a JSON object (a file line) or a hub dataset row.
        where: ``file:line`` or ``dataset row n``, used in every error.
        messages_field: The key holding the message list.

    Raises:
        ConfigError: the row is not a conversation (the message names ``where`` and the fix).
    """
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: a chat line must be a JSON object with {messages_field!r}")
    messages = obj.get(messages_field)
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            f"{where}: no non-empty list {messages_field!r}",
            hint=f'each line: {{"{messages_field}": [{{"role": "user", "content": "..."}}]}}',
        )
    out: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigError(f"{where}: {messages_field}[{i}] is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise ConfigError(
                f"{where}: {messages_field}[{i}].role is {role!r}; use one of "
                + ", ".join(CHAT_ROLES)
            )
        if not isinstance(content, str):
            raise ConfigError(
                f"{where}: {messages_field}[{i}].content must be a string "
                f"(got {type(content).__name__})"
            )
        out.append({"role": str(role), "content": content})
    if not any(m["role"] == "user" for m in out):
        raise ConfigError(f"{where}: the conversation has no user message to answer")
    max_tokens = obj.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise ConfigError(f"{where}: max_tokens must be a positive integer (got {max_tokens!r})")
    return Conversation(messages=tuple(out), max_tokens=max_tokens)


def read_jsonl_objects(path: Path) -> Iterable[tuple[int, Any]]:
    """``(line number, parsed object)`` for each non-blank line of a JSONL file.

    Raises:
        ConfigError: the path is missing, not a regular file, empty, unreadable, or a line is
            not JSON; every message names the file (and the line).
    """
    if not path.exists():
        raise ConfigError(f"dataset file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"dataset file {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read dataset file {path}: {exc}") from exc
    if not text.strip():
        raise ConfigError(f"dataset file {path} is empty", hint="one JSON object per line")
    out: list[tuple[int, Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not JSON: {exc.msg}") from exc
    return out


def read_chat_jsonl(path: Path, messages_field: str = "messages") -> list[Conversation]:
    """Every conversation of a chat JSONL file, checked line by line.

    Raises:
        ConfigError: see :func:`read_jsonl_objects` and :func:`parse_conversation`.
    """
    return [
        parse_conversation(obj, f"{path}:{n}", messages_field)
        for n, obj in read_jsonl_objects(path)
    ]


def expand_turns(conversation: Conversation, turns: Turns) -> list[ChatTurn]:
    """The requests one conversation gives (see the module docstring).

    Messages after the last user message (the recorded answer) are never sent: the model is
    asked to write that answer.
    """
    users = [i for i, m in enumerate(conversation.messages) if m["role"] == "user"]
    ends = users if turns == "each" else users[-1:]
    return [
        ChatTurn(messages=conversation.messages[: end + 1], max_tokens=conversation.max_tokens)
        for end in ends
    ]


__all__ = [
    "CHAT_ROLES",
    "ChatTurn",
    "Conversation",
    "Turns",
    "expand_turns",
    "parse_conversation",
    "read_chat_jsonl",
    "read_jsonl_objects",
]
