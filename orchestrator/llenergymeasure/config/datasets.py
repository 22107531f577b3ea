"""Host-side checks of a study's text and chat datasets, run when the study loads.

A JSONL dataset must exist, be a regular non-empty file and hold one JSON object per line with
the configured field (``text_field`` for ``format: text``, an OpenAI message list under
``messages_field`` for ``format: chat``); a chat dataset whose model or tokenizer is a local
directory must ship a chat template. Each problem names the file (and line) and the key, so the
study fails with exit 2 before any container starts. The parsing is the contract's
(:mod:`llenergymeasure_contract.chat`), the one the harness uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from llenergymeasure_contract.chat import read_chat_jsonl, read_jsonl_objects
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig, JsonlDataset


def _has_chat_template(directory: Path) -> bool:
    """Whether a saved tokenizer directory carries a chat template (``transformers`` writes it
    to ``chat_template.jinja``, older versions to ``chat_template.json`` or into
    ``tokenizer_config.json``)."""
    if (directory / "chat_template.jinja").is_file() or (
        directory / "chat_template.json"
    ).is_file():
        return True
    config = directory / "tokenizer_config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data.get("chat_template"))


def dataset_problems(
    exp: ExperimentConfig, where: str, checked: dict[str, str | None]
) -> list[str]:
    """Problems with ``exp``'s dataset file and chat template, one line each.

    Args:
        exp: A validated experiment (its ``dataset.path`` already absolute).
        where: How the study names the dataset section (e.g. ``experiments[0].dataset``).
        checked: Memo of file checks by path and format, shared across a study's experiments.
    """
    ds = exp.dataset
    problems: list[str] = []
    if isinstance(ds, JsonlDataset):
        key = f"{ds.format}:{ds.messages_field if ds.format == 'chat' else ds.text_field}:{ds.path}"
        if key not in checked:
            checked[key] = _file_problem(ds)
        if checked[key] is not None:
            problems.append(f"{where}.path: {checked[key]}")
    if getattr(ds, "format", "text") == "chat":
        source = exp.tokenizer or exp.model
        directory = Path(source).expanduser()
        if directory.is_dir() and not _has_chat_template(directory):
            key_name = "tokenizer" if exp.tokenizer else "model"
            problems.append(
                f"{where}.format: chat needs a chat template, and {key_name} {source!r} has "
                "none (no chat_template.jinja, nor chat_template in tokenizer_config.json); "
                "use a chat model's tokenizer (tokenizer:) or dataset.format: text"
            )
    return problems


def _file_problem(ds: JsonlDataset) -> str | None:
    path = Path(ds.path)
    try:
        if ds.format == "chat":
            read_chat_jsonl(path, ds.messages_field)
            return None
        for n, obj in read_jsonl_objects(path):
            if not isinstance(obj, dict) or not isinstance(obj.get(ds.text_field), str):
                return f"{path}:{n}: no string field {ds.text_field!r} (dataset.text_field)"
    except ConfigError as exc:
        return str(exc)
    return None


__all__ = ["dataset_problems"]
