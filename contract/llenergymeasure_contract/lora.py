"""The ``lora:`` section of an experiment: which LoRA adapters serve the requests, and how.

An experiment with ``lora:`` sends every request through one adapter of the base model. The
adapters are local directories in peft's format (``adapter_config.json`` plus
``adapter_model.safetensors``), hub ids, adapters the harness generates at run time from a seed
(no download), or, for ``backend: endpoint``, names the running server already serves::

    lora:
      adapters:
        - ./adapters/sql                  # a local directory (relative to the study file)
        - {hub: org/llama-sql-lora, rank: 16}
        - {generate: {count: 4, rank: 16, target_modules: [q_proj, v_proj], seed: 0}}
      selection: zipf                     # round_robin | uniform | zipf
      zipf_s: 1.1
      max_loras: 4                        # adapters resident on the GPU at once
      max_lora_rank: 16
      max_cpu_loras: 16                   # the engine's CPU adapter cache, where it has one

Which request gets which adapter is decided once, backend-independently, by
:func:`select_adapters` (seeded by the experiment's ``random_seed``), so the same config sends
the same adapter with the same prompt on every engine.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from llenergymeasure_contract.architecture import is_local_path
from llenergymeasure_contract.strict import MAX_SEED, StrictModel

#: Modules of the shipped architectures (Llama, Mistral, Qwen2) a generated adapter may target.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: The ranks vLLM accepts for ``max_lora_rank`` (vllm/config/lora.py ``MaxLoRARanks``).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

Selection = Literal["round_robin", "uniform", "zipf"]


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


def _check_name(value: str | None) -> str | None:
    if value is None:
        return value
    if not value or not all(c.isalnum() or c in "-_." for c in value):
        raise ValueError(
            f"adapter name {value!r} must be non-empty letters, digits, '-', '_' or '.' "
            "(it becomes a served model name)"
        )
    return value


class GenerateSpec(_Model):
    """Seeded random adapters of one shape, written in peft's format by the harness."""

    count: int = Field(1, ge=1, le=1024, description="How many adapters of this shape.")
    rank: int = Field(16, ge=1, le=512, description="LoRA rank r.")
    alpha: float | None = Field(
        None, gt=0, description="lora_alpha; default the rank (scale alpha/r = 1)."
    )
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Adapter i is drawn from seed + i.")
    name_prefix: str = Field("lora", description="Adapters are named PREFIX-0, PREFIX-1, ...")

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in LORA_TARGET_MODULES]
        if unknown:
            raise ValueError(
                f"unknown target module(s) {unknown}; expected some of "
                f"{', '.join(LORA_TARGET_MODULES)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"target_modules repeats a module: {value}")
        return value

    @field_validator("name_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        _check_name(value)
        return value

    def names(self) -> list[str]:
        """The adapters' names, in order."""
        return [f"{self.name_prefix}-{i}" for i in range(self.count)]


class GeneratedAdapters(_Model):
    """``{generate: {...}}``: :attr:`GenerateSpec.count` adapters made at run time."""

    generate: GenerateSpec


class PathAdapter(_Model):
    """``{path: DIR}``: an adapter directory in peft's format on the host."""

    path: str = Field(description="Directory with adapter_config.json (relative to the study).")
    name: str | None = Field(None, description="Served name; default the directory's name.")
    rank: int | None = Field(
        None, ge=1, description="Its rank; read from adapter_config.json at load when absent."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return _check_name(value)


class HubAdapter(_Model):
    """``{hub: ID}``: an adapter the engine downloads (needs network access)."""

    hub: str = Field(description="Hub id of the adapter, e.g. 'org/llama-sql-lora'.")
    name: str | None = Field(None, description="Served name; default the id's last part.")
    rank: int | None = Field(None, ge=1, description="Its rank, for the max_lora_rank check.")
    revision: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return _check_name(value)


class ServedAdapter(_Model):
    """``{served: NAME}``: an adapter the running server (``backend: endpoint``) serves."""

    served: str = Field(description="The model name the server serves the adapter under.")
    rank: int | None = Field(None, ge=1)


AdapterEntry = Annotated[
    GeneratedAdapters | PathAdapter | HubAdapter | ServedAdapter, Field(union_mode="left_to_right")
]


class AdapterRef(_Model):
    """One adapter after expansion: what a backend loads and a request names."""

    name: str
    kind: Literal["generated", "path", "hub", "served"]
    source: str | None = None  # the directory or hub id (None: generated or served)
    rank: int | None = None
    spec: GenerateSpec | None = None  # generated adapters: their shape
    index: int = 0  # generated adapters: which of the spec's ``count``


@dataclass(frozen=True)
class LoraSupport:
    """What a backend can do with LoRA adapters (``BackendSpec.lora``; None: nothing).

    Attributes:
        swaps: True when the engine keeps ``max_loras`` adapters on the GPU and swaps the
            others in from a CPU cache or disk as requests need them (vLLM, TensorRT-LLM).
            False when every adapter is loaded onto the model at once and stays there
            (PyTorch through peft): then ``max_loras`` must cover every adapter.
        cpu_cache: True when ``max_cpu_loras`` sets a cache of the engine's.
        kinds: Adapter kinds it accepts (``generated``, ``path``, ``hub``, ``served``).
        server: True when its server mode serves adapters too (``vllm serve --lora-modules``).
        rank_choices: The only values ``max_lora_rank`` may take, when the engine restricts it.
    """

    swaps: bool
    cpu_cache: bool
    kinds: tuple[str, ...] = ("generated", "path", "hub")
    server: bool = False
    rank_choices: tuple[int, ...] | None = None


class LoraConfig(_Model):
    """The ``lora:`` section (see the module docstring)."""

    adapters: list[AdapterEntry] = Field(min_length=1)
    selection: Selection = Field(
        "round_robin",
        description="How a request picks its adapter: round_robin (request i gets adapter "
        "i mod n), uniform (seeded uniform draws) or zipf (seeded, adapter k with weight "
        "1/k^zipf_s).",
    )
    zipf_s: float = Field(1.0, gt=0.0, le=10.0, description="Zipf exponent (selection: zipf).")
    max_loras: int | None = Field(
        None, ge=1, description="Adapters resident on the GPU at once; default all of them."
    )
    max_lora_rank: int | None = Field(
        None, ge=1, le=512, description="Largest rank the engine reserves; default the largest."
    )
    max_cpu_loras: int | None = Field(
        None, ge=1, description="The engine's CPU adapter cache (vLLM, TensorRT-LLM)."
    )

    @field_validator("adapters", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        # A bare string is a local path when written as one (./x, /x, ~/x), else a hub id.
        if isinstance(value, list):
            return [
                ({"path": v} if is_local_path(v) else {"hub": v}) if isinstance(v, str) else v
                for v in value
            ]
        return value

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        refs = self.refs()
        names = [r.name for r in refs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"lora.adapters: adapter name(s) {dupes} appear more than once; give each "
                "a distinct name: (or a distinct generate.name_prefix)"
            )
        top = max((r.rank for r in refs if r.rank is not None), default=None)
        if self.max_lora_rank is not None and top is not None and top > self.max_lora_rank:
            worst = next(r for r in refs if r.rank == top)
            raise ValueError(
                f"lora.max_lora_rank ({self.max_lora_rank}) is below the rank of adapter "
                f"{worst.name!r} ({top}); raise max_lora_rank to at least {top}"
            )
        if (
            self.max_cpu_loras is not None
            and self.max_loras is not None
            and self.max_cpu_loras < self.max_loras
        ):
            raise ValueError(
                f"lora.max_cpu_loras ({self.max_cpu_loras}) is below lora.max_loras "
                f"({self.max_loras}); the CPU cache must hold every resident adapter"
            )
        return self

    def refs(self) -> list[AdapterRef]:
        """Every adapter, generated ones expanded, in the order requests index them."""
        out: list[AdapterRef] = []
        for entry in self.adapters:
            if isinstance(entry, GeneratedAdapters):
                spec = entry.generate
                out.extend(
                    AdapterRef(name=n, kind="generated", rank=spec.rank, spec=spec, index=i)
                    for i, n in enumerate(spec.names())
                )
            elif isinstance(entry, PathAdapter):
                name = entry.name or entry.path.rstrip("/").rsplit("/", 1)[-1] or "adapter"
                out.append(AdapterRef(name=name, kind="path", source=entry.path, rank=entry.rank))
            elif isinstance(entry, HubAdapter):
                name = entry.name or entry.hub.rstrip("/").rsplit("/", 1)[-1]
                out.append(AdapterRef(name=name, kind="hub", source=entry.hub, rank=entry.rank))
            else:
                out.append(AdapterRef(name=entry.served, kind="served", rank=entry.rank))
        return out

    @property
    def n_adapters(self) -> int:
        """How many adapters the requests spread over."""
        return len(self.refs())

    @property
    def resolved_max_loras(self) -> int:
        """Adapters resident at once: ``max_loras``, default every adapter."""
        return self.max_loras if self.max_loras is not None else self.n_adapters

    def resolved_max_lora_rank(self, allowed: tuple[int, ...] | None = None) -> int:
        """``max_lora_rank``, default the largest known adapter rank (16 when none is known),
        rounded up to the next of ``allowed`` when given (vLLM accepts only some ranks)."""
        rank = self.max_lora_rank
        if rank is None:
            rank = max((r.rank for r in self.refs() if r.rank is not None), default=16)
        if allowed:
            rank = next((a for a in allowed if a >= rank), allowed[-1])
        return rank


def check_lora_backend(
    lora: LoraConfig, support: LoraSupport | None, *, backend: str, server_mode: bool
) -> None:
    """Refuse a ``lora:`` section the backend cannot serve (called from the experiment's
    validator, so a bad study exits 2 at load naming the key).

    Raises:
        ValueError: the backend (or its server mode) serves no adapters; an adapter kind it
            cannot load; ``max_loras`` below the adapter count where every adapter must be
            resident (a backend whose :attr:`LoraSupport.swaps` is False); ``max_cpu_loras`` on
            an engine without that cache; a ``max_lora_rank`` the engine does not accept.
    """
    if support is None:
        raise ValueError(
            f"lora: backend {backend} cannot serve LoRA adapters; remove lora: or use a "
            "backend that can (pytorch, vllm, tensorrt, endpoint)"
        )
    if server_mode and not support.server:
        raise ValueError(
            f"lora: the server mode of backend {backend} cannot serve LoRA adapters; remove "
            "server: (in-process) or lora:, or use backend vllm (vllm serve --lora-modules)"
        )
    refs = lora.refs()
    bad = sorted({r.kind for r in refs if r.kind not in support.kinds})
    if bad:
        how = {
            "served": "{served: NAME} names an adapter of an already running server "
            "(backend: endpoint)",
            "generated": "the running server cannot load adapters llem generates; load them "
            "into it and list them as {served: NAME}",
            "path": "list the adapters the server serves as {served: NAME}",
            "hub": "list the adapters the server serves as {served: NAME}",
        }
        raise ValueError(
            f"lora.adapters: backend {backend} cannot use {', '.join(bad)} adapters; "
            + "; ".join(how[k] for k in bad)
        )
    if not support.swaps and lora.max_loras is not None and lora.max_loras < len(refs):
        raise ValueError(
            f"lora.max_loras ({lora.max_loras}) is below the number of adapters ({len(refs)}), "
            f"but backend {backend} keeps every adapter resident (peft loads all of them onto "
            "the model; it does not swap); raise max_loras to "
            f"{len(refs)}, leave it out, or use fewer adapters"
        )
    if lora.max_cpu_loras is not None and not support.cpu_cache:
        raise ValueError(
            f"lora.max_cpu_loras: backend {backend} has no CPU adapter cache; remove it"
        )
    rank = lora.max_lora_rank
    if support.rank_choices and rank is not None and rank not in support.rank_choices:
        raise ValueError(
            f"lora.max_lora_rank ({rank}) is not one backend {backend} accepts: "
            f"{', '.join(map(str, support.rank_choices))}"
        )


def select_adapters(
    n_requests: int, names: list[str], selection: Selection, *, seed: int, zipf_s: float = 1.0
) -> list[str]:
    """The adapter of each request, in request order (pure, seeded, backend-independent).

    * ``round_robin``: request ``i`` gets ``names[i % len(names)]``.
    * ``uniform``: independent draws, each adapter with probability ``1/n``.
    * ``zipf``: independent draws, adapter ``k`` (1-based, in listed order) with probability
      proportional to ``1 / k**zipf_s``: the first adapter is the most popular.

    Draws use ``random.Random(seed)`` of their own, so they do not disturb the prompt stream.
    """
    if not names:
        raise ValueError("no adapters to select from")
    if selection == "round_robin":
        return [names[i % len(names)] for i in range(n_requests)]
    rng = random.Random(f"llem-lora-{seed}")
    if selection == "uniform":
        return [names[rng.randrange(len(names))] for _ in range(n_requests)]
    weights = [1.0 / (k**zipf_s) for k in range(1, len(names) + 1)]
    cumulative: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    picks = []
    for _ in range(n_requests):
        i = bisect.bisect_right(cumulative, rng.random() * total)
        picks.append(names[min(i, len(names) - 1)])
    return picks


__all__ = [
    "LORA_TARGET_MODULES",
    "VLLM_MAX_LORA_RANKS",
    "AdapterEntry",
    "AdapterRef",
    "GenerateSpec",
    "GeneratedAdapters",
    "HubAdapter",
    "LoraConfig",
    "LoraSupport",
    "PathAdapter",
    "Selection",
    "ServedAdapter",
    "check_lora_backend",
    "select_adapters",
]
