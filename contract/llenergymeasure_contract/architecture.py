"""Model architectures: built-in ``config.json`` files, parameter counts, FLOPs and memory.

The main entry point is :func:`resolve_architecture`. It never touches the network: it reads a
built-in architecture shipped in ``llenergymeasure_contract/architectures/`` or a local
``config.json``.
For a hub id that is not built in it returns ``None``, and estimates are reported as unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ConfigError

#: Hub ids that map onto a built-in architecture (lower-cased).
HUB_ALIASES: dict[str, str] = {
    "meta-llama/llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/meta-llama-3.1-8b": "llama-3.1-8b",
    "meta-llama/meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama/llama-3.1-70b": "llama-3.1-70b",
    "meta-llama/llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama/meta-llama-3.1-70b": "llama-3.1-70b",
    "meta-llama/meta-llama-3.1-70b-instruct": "llama-3.1-70b",
    "meta-llama/llama-3.2-1b": "llama-3.2-1b",
    "meta-llama/llama-3.2-1b-instruct": "llama-3.2-1b",
    "qwen/qwen2.5-7b": "qwen2.5-7b",
    "qwen/qwen2.5-7b-instruct": "qwen2.5-7b",
    "mistralai/mistral-7b-v0.3": "mistral-7b",
    "mistralai/mistral-7b-instruct-v0.3": "mistral-7b",
}

DTYPE_BYTES: dict[str, float] = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "auto": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
}

FLOPS_METHOD = "2*N_matmul + 2*n_layers*context*d_attn per token (Kaplan et al. 2020, forward only)"


@cache
def _builtin_names() -> tuple[str, ...]:
    root = resources.files("llenergymeasure_contract") / "architectures"
    return tuple(
        sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))
    )


def builtin_architectures() -> list[str]:
    """Names of the architectures shipped with the package, sorted."""
    return list(_builtin_names())


@cache
def _load_builtin(name: str) -> dict[str, Any]:
    root = resources.files("llenergymeasure_contract") / "architectures"
    data: dict[str, Any] = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
    return data


@cache
def _builtin_spec(name: str) -> ArchitectureSpec:
    return ArchitectureSpec(name=name, source="builtin", hf_config=_load_builtin(name))


def builtin_name_for(model: str) -> str | None:
    """The built-in architecture a model name refers to, or None."""
    key = model.strip().lower()
    if key in _builtin_names():
        return key
    return HUB_ALIASES.get(key)


def is_local_path(model: str) -> bool:
    """Whether ``model`` is written as a filesystem path rather than a hub id or name.

    The one test, by syntax only (no I/O), of every side: the loader (which makes such paths
    absolute), the Docker runner (which mounts them) and preflight (which checks they exist).
    Absolute, ``~``-relative, ``./``/``../``-relative, ``.``/``..``, or a ``.json`` file; a
    bare ``org/name`` is a hub id.
    """
    return (
        model.startswith(("/", "./", "../", "~")) or model in {".", ".."} or model.endswith(".json")
    )


@dataclass(frozen=True)
class ArchitectureSpec:
    """What the orchestrator and harness need to know about a model's shape."""

    name: str  # built-in name, or the path it was read from
    source: str  # "builtin" | "local"
    hf_config: dict[str, Any]

    def _get(self, key: str, default: int | None = None) -> int:
        value = self.hf_config.get(key, default)
        if value is None:
            raise ConfigError(f"architecture {self.name!r} has no {key!r} in its config.json")
        return int(value)

    @property
    def hidden_size(self) -> int:
        return self._get("hidden_size")

    @property
    def n_layers(self) -> int:
        return self._get("num_hidden_layers")

    @property
    def n_heads(self) -> int:
        return self._get("num_attention_heads")

    @property
    def n_kv_heads(self) -> int:
        return self._get("num_key_value_heads", self.n_heads)

    @property
    def head_dim(self) -> int:
        explicit = self.hf_config.get("head_dim")
        return int(explicit) if explicit else self.hidden_size // self.n_heads

    @property
    def vocab_size(self) -> int:
        return self._get("vocab_size")

    @property
    def intermediate_size(self) -> int:
        return self._get("intermediate_size", 4 * self.hidden_size)

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.hf_config.get("tie_word_embeddings", False))

    @cached_property
    def matmul_parameter_count(self) -> int:
        """Parameters that take part in a matmul per token (all but the embedding lookup)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.n_heads * d + 2 * h * self.n_kv_heads * d + self.n_heads * d * h
        mlp = 3 * h * self.intermediate_size  # gated MLP: gate, up, down
        norms = 2 * h
        per_layer = attn + mlp + norms
        return self.n_layers * per_layer + h + self.vocab_size * h  # + final norm + lm_head

    @cached_property
    def parameter_count(self) -> int:
        """Total parameters, counting tied embeddings once."""
        embed = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return self.matmul_parameter_count + embed

    def flops_per_token(self, context_len: float) -> float:
        """Forward FLOPs for one token attending to ``context_len`` earlier tokens."""
        d_attn = self.n_heads * self.head_dim
        return 2.0 * self.matmul_parameter_count + 2.0 * self.n_layers * context_len * d_attn

    def kv_bytes_per_token(self, dtype_bytes: float) -> float:
        """KV-cache bytes one token occupies across all layers."""
        return 2.0 * self.n_layers * self.n_kv_heads * self.head_dim * dtype_bytes

    def generation_flops(self, input_len: int, output_len: int) -> float:
        """FLOPs to prefill ``input_len`` tokens then decode ``output_len`` tokens (one request)."""
        prefill = input_len * self.flops_per_token(input_len / 2.0)
        decode = output_len * self.flops_per_token(input_len + output_len / 2.0)
        return prefill + decode

    def memory_estimate_bytes(
        self,
        *,
        weight_bytes_per_param: float,
        kv_bytes_per_elem: float,
        concurrency: int,
        seq_len: int,
    ) -> dict[str, float]:
        """Weights plus KV cache for ``concurrency`` sequences of ``seq_len`` tokens."""
        weights = self.parameter_count * weight_bytes_per_param
        kv = self.kv_bytes_per_token(kv_bytes_per_elem) * concurrency * seq_len
        return {"weights_bytes": weights, "kv_cache_bytes": kv, "total_bytes": weights + kv}


def resolve_architecture(model: str, *, base_dir: Path | None = None) -> ArchitectureSpec | None:
    """Find the architecture for ``model`` without any network access.

    Args:
        model: A built-in name (``"llama-3.1-8b"``), a known hub id, or a path to a
            ``config.json`` or to a directory containing one.
        base_dir: Directory relative paths are resolved against.

    Returns:
        The spec, or ``None`` for a hub id that is not built in (only the hub knows it).

    Raises:
        ConfigError: ``model`` is a path that does not hold a readable ``config.json``.
    """
    name = builtin_name_for(model)
    if name is not None:
        return _builtin_spec(name)
    path = Path(model).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read architecture config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a config.json object")
        return ArchitectureSpec(name=str(path), source="local", hf_config=data)
    if is_local_path(model):
        raise ConfigError(
            f"model path {model!r} has no config.json",
            hint="give a directory holding config.json, a config.json path, or one of: "
            + ", ".join(builtin_architectures()),
        )
    return None
