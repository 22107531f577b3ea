"""Input rules every config model shares: :class:`StrictModel` and the limits it enforces.

pydantic's lax mode turns ``true`` into ``1`` for an integer field and accepts ``inf`` for a
float one; a study file typed by a person should say neither. Every config section (the
contract's and the host's) derives from :class:`StrictModel`, which refuses, per field:

* ``true``/``false`` where the field takes a number (``n_prompts: true``), also inside a
  list of numbers (``gpus: [true]``);
* NaN and infinity in any float field (``allow_inf_nan=False``);
* control characters (newline, NUL, escape ...) in any text field, and text longer than
  :data:`MAX_TEXT_LEN` characters: such a value would reach a terminal, a file name, a
  command line or a job script.

The rules are documented in ``docs/study-grammar.md`` ("Limits").
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

#: Longest text value accepted in a config field (a model id, a path, a label).
MAX_TEXT_LEN = 4096
#: Seeds go to ``random.Random``, NumPy's legacy ``np.random.seed`` (vLLM seeds it, and it
#: takes 0 <= seed < 2**32) and ``torch.manual_seed``: the range all of them accept.
MAX_SEED = 2**32 - 1
#: Longest prompt or output, in tokens, an experiment may ask for (2**20; the longest
#: context windows of current models are 128k-1M tokens).
MAX_TOKENS = 1_048_576

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

#: ``scheme://user:password@host`` (or ``user@host``): the userinfo part of a URL.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@]*)@")
#: Query parameters that carry a credential (``?token=...``, ``&api_key=...``).
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:[^=&;#]*?)(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|access[_-]?key"
    r"|auth|signature|sig|credential)[^=&;#]*=)(?P<value>[^&;#]*)",
    re.IGNORECASE,
)

_Kind = Literal["number", "numbers", "text", "other"]


def control_chars(text: str) -> list[str]:
    """The control characters in ``text``, as escapes (``['\\n', '\\x00']``), sorted."""
    return sorted({repr(c)[1:-1] for c in _CONTROL.findall(text)})


def check_text(text: str) -> str:
    """``text`` unchanged, or ``ValueError`` for control characters or excessive length."""
    if len(text) > MAX_TEXT_LEN:
        raise ValueError(f"is {len(text):,} characters long; at most {MAX_TEXT_LEN:,} are accepted")
    bad = control_chars(text)
    if bad:
        raise ValueError(
            f"contains control characters ({', '.join(bad)}); a value must be one line of "
            "printable text"
        )
    return text


def url_credentials(url: str) -> list[str]:
    """What in ``url`` is a credential: ``"user:password"`` (userinfo) or query keys."""
    found = []
    if _USERINFO.match(url.strip()):
        found.append("a user name/password before '@'")
    keys = [m.group("key")[1:-1] for m in _SECRET_QUERY.finditer(url) if m.group("value")]
    if keys:
        found.append("query parameter " + ", ".join(repr(k) for k in keys))
    return found


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = re.sub(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s'\"]*@", r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + "***" if m.group("value") else m[0], text)


def check_url(url: str, key: str, fix: str) -> str:
    """``url`` unchanged, or ``ValueError`` (without the secret) when it holds a credential.

    Args:
        url: The URL as given.
        key: The key path it came from, for the message (``endpoint.url``).
        fix: How to pass the credential instead (by the name of an environment variable).
    """
    found = url_credentials(url)
    if found:
        raise ValueError(
            f"holds a credential ({'; '.join(found)}: {redact_url(url)}); {key} is written "
            f"into plan.json, the results and the logs, so it must carry no secret. {fix}"
        )
    return url


def concrete_types(annotation: Any) -> list[Any]:
    """The concrete types inside Optional/Union/Annotated."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return concrete_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(concrete_types(arg))
        return out
    return [annotation]


def _kind(annotation: Any) -> _Kind:
    types_ = concrete_types(annotation)
    if bool in types_:
        return "other"
    if any(t in (int, float) for t in types_):
        return "number"
    for t in types_:
        if typing.get_origin(t) is list and typing.get_args(t) in ((int,), (float,)):
            return "numbers"
    if str in types_:
        return "text"
    return "other"


_KINDS: dict[tuple[type, str], _Kind] = {}


def strict_value(model: type[BaseModel], name: str, value: Any) -> Any:
    """``value`` unchanged, or ``ValueError`` when it breaks a rule of the module docstring."""
    t = type(value)
    if t is not bool and t is not str and t is not list:
        return value
    kind = _KINDS.get((model, name))
    if kind is None:
        field = model.model_fields.get(name)
        kind = _kind(field.annotation) if field is not None else "other"
        _KINDS[(model, name)] = kind
    if t is bool and kind == "number":
        raise ValueError(f"must be a number, not {str(value).lower()}")
    if t is list and kind == "numbers" and any(type(v) is bool for v in value):
        raise ValueError("must be a list of numbers, not true/false")
    if t is str and kind == "text":
        check_text(value)
    return value


#: The model configuration of every strict config model.
STRICT_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StrictModel(BaseModel):
    """Frozen, no unknown keys, no NaN/inf, no booleans for numbers, no control characters.

    (A member of a discriminated union cannot take an every-field validator; it uses
    :data:`STRICT_CONFIG` and calls :func:`strict_value` from a validator of its own fields.)
    """

    model_config = STRICT_CONFIG

    @field_validator("*", mode="before")
    @classmethod
    def _strict_input(cls, value: Any, info: ValidationInfo) -> Any:
        return strict_value(cls, info.field_name or "", value)


__all__ = [
    "MAX_SEED",
    "MAX_TEXT_LEN",
    "MAX_TOKENS",
    "STRICT_CONFIG",
    "StrictModel",
    "check_text",
    "check_url",
    "control_chars",
    "redact_url",
    "strict_value",
    "url_credentials",
]
