"""The experiment configuration: one measured run of one model on one backend.

:class:`ExperimentConfig` is the schema the orchestrator expands a study into and the harness
reads back from its environment. It is frozen and rejects unknown keys; validators only
validate (no I/O, no device probing). Cross-field rules that are known to be invalid are errors
here, at load time, never at run time.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from llenergymeasure_contract.architecture import builtin_name_for
from llenergymeasure_contract.evaluation import QualityConfig, quality_problem
from llenergymeasure_contract.lengths import (
    LengthSpec,
    WorkloadProvenance,
    builtin_profiles,
    check_caps,
    expected_length,
    prepare_experiment_data,
)
from llenergymeasure_contract.lora import LoraConfig, check_lora_backend
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.sections import (
    BackendName,
    PyTorchConfig,
    TensorRTConfig,
    VLLMConfig,
)
from llenergymeasure_contract.serving import EndpointConfig, ServerConfig
from llenergymeasure_contract.strict import (
    MAX_SEED,
    MAX_TOKENS,
    STRICT_CONFIG,
    StrictModel,
    strict_value,
)
from llenergymeasure_contract.traffic import DEFAULT_TRAFFIC, TrafficConfig

Precision = Literal["float32", "float16", "bfloat16", "auto"]
PRECISION_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


class _Model(StrictModel):
    """Frozen, strict input (:mod:`llenergymeasure_contract.strict`)."""


# --------------------------------------------------------------------------- datasets


class _Dataset(BaseModel):
    """A dataset section: strict input, with ``source`` (the union's tag) left alone."""

    model_config = STRICT_CONFIG

    @field_validator(
        "input_len",
        "output_len",
        "profile",
        "path",
        "name",
        "split",
        "subset",
        "text_field",
        mode="before",
        check_fields=False,
    )
    @classmethod
    def _strict_input(cls, value: Any, info: ValidationInfo) -> Any:
        return strict_value(cls, info.field_name or "", value)


class SyntheticDataset(_Dataset):
    """Seeded random token ids: the same prompts on every backend, no tokenizer needed.

    Lengths are an integer or a distribution (:mod:`llenergymeasure_contract.lengths`), drawn
    per request from ``random_seed``; ``profile`` names a workload profile that supplies them.
    """

    source: Literal["synthetic"] = "synthetic"
    profile: str | None = Field(
        None, description="Workload profile: a built-in name or a YAML/JSON file."
    )
    input_len: LengthSpec | None = Field(
        None, description="Prompt length in tokens, or a distribution; default max_input_tokens."
    )
    output_len: LengthSpec | None = Field(
        None, description="Output length in tokens, or a distribution; default max_output_tokens."
    )
    provenance: WorkloadProvenance | None = Field(
        None, description="Filled from the profile when the study is loaded."
    )

    @model_serializer(mode="wrap")
    def _drop_unused_late_fields(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Fields that joined later are left out when unused, so the hash of every config
        # measured before them is unchanged (and an older image still accepts the config).
        data = handler(self)
        if isinstance(data, dict):
            for key in ("profile", "provenance"):
                if data.get(key) is None:
                    data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _profile_resolved(self) -> SyntheticDataset:
        if self.profile is not None and self.provenance is None:
            raise ValueError(
                f"profile {self.profile!r} is not a built-in profile "
                f"({', '.join(builtin_profiles())}); a profile file is read when a study file "
                "is loaded (relative to it); `llem workloads list` shows the built-in ones"
            )
        return self


class _TextOrChat(_Dataset):
    """What a text dataset's rows hold: a prompt (``text``) or a conversation (``chat``).

    ``chat`` rows are OpenAI-format message lists (:mod:`llenergymeasure_contract.chat`),
    rendered with the model's chat template; ``turns: each`` sends every user turn as its own
    request with the history before it (ML.ENERGY's ``lm-arena-chat``), ``last`` only the last.
    """

    format: Literal["text", "chat"] = Field(
        "text", description="text: one prompt per row; chat: one conversation per row."
    )
    messages_field: str = Field(
        "messages", description="format chat: key (column) holding the message list."
    )
    turns: Literal["last", "each"] = Field(
        "last", description="format chat: one request per conversation, or per user turn."
    )

    @field_validator("messages_field", mode="before")
    @classmethod
    def _strict_messages_field(cls, value: Any, info: ValidationInfo) -> Any:
        return strict_value(cls, info.field_name or "", value)

    @model_validator(mode="after")
    def _chat_keys_need_chat(self) -> _TextOrChat:
        # Non-default values only: a dumped config (defaults written out) must validate again.
        if self.format == "text" and (self.turns != "last" or self.messages_field != "messages"):
            raise ValueError(
                "dataset.turns and dataset.messages_field apply to conversations; "
                "set dataset.format: chat (or leave them out)"
            )
        return self


class JsonlDataset(_TextOrChat):
    """Prompts (or conversations, with ``format: chat``) from a JSONL file, one per line."""

    source: Literal["jsonl"]
    path: str = Field(description="Path to the .jsonl file (relative to the study file).")
    text_field: str = Field("prompt", description="Key holding the prompt text.")


class HubDataset(_TextOrChat):
    """Prompts (or conversations, with ``format: chat``) from a Hugging Face hub dataset."""

    source: Literal["hub"]
    name: str = Field(description="Hub dataset id, e.g. 'tatsu-lab/alpaca'.")
    split: str = "train"
    subset: str | None = None
    text_field: str = Field("text", description="Column holding the prompt text.")


DatasetConfig = Annotated[
    SyntheticDataset | JsonlDataset | HubDataset, Field(discriminator="source")
]

# --------------------------------------------------------------------------- decoding

DECODER_PRESETS: dict[str, dict[str, float | int]] = {
    "greedy": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0},
    "standard": {"temperature": 0.7, "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.0},
    "creative": {"temperature": 1.0, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0},
}


class DecoderConfig(_Model):
    """Greedy or sampling parameters. A preset fills what is not given explicitly."""

    preset: Literal["greedy", "standard", "creative"] | None = None
    temperature: float = Field(0.0, ge=0.0, le=10.0, description="0 means greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k.")
    repetition_penalty: float = Field(1.0, gt=0.0)
    do_sample: bool = Field(False, description="Derived: true when temperature > 0.")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        preset = out.get("preset")
        if isinstance(preset, str) and preset in DECODER_PRESETS:
            for key, value in DECODER_PRESETS[preset].items():
                out.setdefault(key, value)
        temperature = out.get("temperature", 0.0)
        if isinstance(temperature, int | float):
            derived = temperature > 0
            given = out.get("do_sample")
            if given is not None and bool(given) != derived:
                raise ValueError(
                    f"decoder.do_sample={given} contradicts decoder.temperature={temperature}; "
                    "do_sample is derived from temperature (0 = greedy), so leave it out"
                )
            out["do_sample"] = derived
        return out


# --------------------------------------------------------------------------- measurement


class WarmupConfig(_Model):
    """Warmup before measuring; never measured itself, always with the measured shapes."""

    mode: Literal["fixed", "convergence"] = "fixed"
    n_batches: int = Field(2, ge=0, description="Fixed mode: warmup steps of the measured shape.")
    cv_threshold: float = Field(
        0.05, gt=0.0, lt=1.0, description="Convergence mode: CV of step latency to reach."
    )
    window: int = Field(3, ge=2, description="Convergence mode: steps the CV is taken over.")
    max_batches: int = Field(20, ge=1, description="Convergence mode: cap on warmup steps.")
    min_duration_s: float = Field(
        0.0, ge=0.0, description="Thermal floor: keep warming up at least this long."
    )

    @model_validator(mode="after")
    def _check(self) -> WarmupConfig:
        if self.mode == "convergence" and self.max_batches < self.window:
            raise ValueError(
                f"warmup.max_batches ({self.max_batches}) is smaller than warmup.window "
                f"({self.window}); convergence can never be judged"
            )
        return self


class BaselineConfig(_Model):
    """Idle power baseline, measured with the model loaded and the CUDA context open."""

    enabled: bool = True
    duration_s: float = Field(10.0, ge=1.0, le=600.0)
    cache_ttl_s: float = Field(
        3600.0, ge=0.0, description="Reuse a cached baseline this long (0 = always measure)."
    )


class EnergyConfig(_Model):
    """Energy measurement: which sampler, and the time-series rate."""

    @field_validator("sampler", mode="before")
    @classmethod
    def _yaml_null(cls, value: Any) -> Any:
        # `sampler: null` in YAML reads as None; it means the null (no-GPU) sampler.
        return "null" if value is None else value

    sampler: Literal["auto", "nvml", "zeus", "codecarbon", "null"] = "auto"
    sample_rate_hz: float = Field(10.0, gt=0.0, le=100.0)
    timeseries: bool = Field(True, description="Record power/clock/temperature time series.")


# --------------------------------------------------------------------------- experiment

IDENTITY_EXCLUDE = frozenset({"name"})
DEFAULT_BACKEND: BackendName = "pytorch"
#: Sections that joined the schema later: part of the identity only when they differ from
#: these defaults, so every result measured before they existed keeps its config hash.
IDENTITY_WHEN_NON_DEFAULT: dict[str, object] = {
    "traffic": DEFAULT_TRAFFIC,
    "server": None,
    "endpoint": None,
    "quality": None,
    "lora": None,
}


class ExperimentConfig(_Model):
    """One experiment: model x backend x settings x workload. See the module docstring."""

    name: str | None = Field(None, description="Free label; not part of the identity hash.")
    model: str = Field(
        description="Hub id, local path, or (with load_format: dummy) a built-in architecture."
    )
    load_format: Literal["auto", "dummy"] = Field(
        "auto", description="dummy: random weights from the architecture config, no download."
    )
    tokenizer: str | None = Field(None, description="Tokenizer hub id or path; default: model.")
    revision: str | None = None
    trust_remote_code: bool = False
    backend: BackendName = DEFAULT_BACKEND
    precision: Precision = "bfloat16"
    # Frozen sub-models: one shared default instance each is safe, and cheaper than a factory.
    dataset: DatasetConfig = SyntheticDataset()
    n_prompts: int = Field(100, ge=1, le=1_000_000)
    max_input_tokens: int = Field(512, ge=1, le=MAX_TOKENS)
    max_output_tokens: int = Field(128, ge=1, le=MAX_TOKENS)
    ignore_eos: bool = Field(True, description="Fixed-length output: generate exactly the cap.")
    decoder: DecoderConfig = DecoderConfig()
    warmup: WarmupConfig = WarmupConfig()
    baseline: BaselineConfig = BaselineConfig()
    energy: EnergyConfig = EnergyConfig()
    gpus: list[int] = Field(
        default_factory=lambda: [0],
        description="GPU indices on the host; [] runs on the CPU (pytorch only, no energy).",
    )
    random_seed: int = Field(42, ge=0, le=MAX_SEED, description="0 .. 2**32-1.")
    traffic: TrafficConfig = Field(
        DEFAULT_TRAFFIC, description="How requests arrive: offline (all at t=0) or a process."
    )
    server: ServerConfig | None = Field(
        None,
        description="Server mode: run the engine's OpenAI-compatible server and measure it "
        "over HTTP (transformers serve / vllm serve / trtllm-serve).",
    )
    lora: LoraConfig | None = Field(
        None, description="LoRA adapters the requests are served through (see lora.py)."
    )
    pytorch: PyTorchConfig | None = None
    vllm: VLLMConfig | None = None
    tensorrt: TensorRTConfig | None = None
    endpoint: EndpointConfig | None = None
    quality: QualityConfig | None = Field(
        None,
        description="Accuracy with lm-evaluation-harness after the performance window, on the "
        "same engine, in its own energy window (docs/methodology.md, quality_per_joule).",
    )

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(
                "must not be empty: give a hub id (org/name), a local path or a built-in "
                "architecture such as tiny-llama"
            )
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_alias(cls, value: Any) -> Any:
        if isinstance(value, str):
            return PRECISION_ALIASES.get(value.lower(), value.lower())
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus_unique(cls, value: list[int]) -> list[int]:
        if any(g < 0 for g in value):
            raise ValueError("GPU indices must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError(f"GPU indices must be unique, got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_section(cls, data: Any) -> Any:
        # The section of the chosen backend is always present after validation, so a resolved
        # config (and its hash) spells out every knob that was in effect.
        if isinstance(data, dict):
            dataset = data.get("dataset")
            if isinstance(dataset, dict) and "source" not in dataset:
                data = {**data, "dataset": {"source": "synthetic", **dataset}}
            data = prepare_experiment_data(data)
            backend = data.get("backend", DEFAULT_BACKEND)
            if isinstance(backend, str) and backend in REGISTRY and data.get(backend) is None:
                data = {**data, backend: {}}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> ExperimentConfig:
        for other in REGISTRY.names():
            if other != self.backend and getattr(self, other, None) is not None:
                raise ValueError(
                    f"section '{other}:' does not match backend '{self.backend}'; "
                    f"move those settings under '{self.backend}:' or set backend: {other}"
                )
        if self.quality is not None:
            problem = quality_problem(self)
            if problem:
                raise ValueError(problem)
        spec = REGISTRY.get(self.backend)
        if self.lora is not None:
            check_lora_backend(
                self.lora, spec.lora, backend=self.backend, server_mode=self.server is not None
            )
        if not self.gpus and spec.needs_gpu:
            raise ValueError(
                f"gpus: [] means CPU only, but backend {self.backend} needs a GPU; "
                "list GPU indices, e.g. gpus: [0]"
            )
        needed = spec.gpus_needed(self.backend_section)
        if self.gpus and needed > len(self.gpus):
            sizes = " x ".join(spec.parallel_keys)
            raise ValueError(
                f"{self.backend}.{sizes} = {needed} "
                f"needs {needed} GPUs but gpus lists {len(self.gpus)} ({self.gpus}); "
                f"list more GPUs or lower the parallel sizes"
            )
        if isinstance(self.dataset, SyntheticDataset):
            ds = self.dataset
            check_caps(ds.input_len, self.max_input_tokens, "dataset.input_len", "max_input_tokens")
            check_caps(
                ds.output_len, self.max_output_tokens, "dataset.output_len", "max_output_tokens"
            )
        elif (
            self.load_format == "dummy"
            and self.tokenizer is None
            and builtin_name_for(self.model) is not None
            and builtin_name_for(self.model) == self.model.strip().lower()
        ):
            raise ValueError(
                f"dataset source '{self.dataset.source}' holds text, which needs a tokenizer, "
                f"but built-in architecture '{self.model}' has none; set tokenizer: to a hub id "
                "or local path, or use dataset: {source: synthetic}"
            )
        if spec.validate is not None:  # the backend's own rules (its registry entry)
            spec.validate(self)
        return self

    # ----------------------------------------------------------------- derived values

    @property
    def backend_section(self) -> BaseModel:
        """The section of the chosen backend (always present after validation)."""
        section = getattr(self, self.backend)
        assert isinstance(section, BaseModel)  # guaranteed by _default_section
        return section

    @cached_property
    def config_hash(self) -> str:
        """Stable identity: sha256 of the canonical resolved config, minus labels (16 hex).

        Canonical because fields serialise in declaration order and every free-form dict is
        key-sorted on validation (:func:`canonical_dict`), so equal configs hash equal.
        """
        exclude = set(IDENTITY_EXCLUDE) | self._default_late_sections()
        canonical = self.model_dump_json(exclude=exclude)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def resolved_input_len(self) -> int:
        """Prompt length in tokens for synthetic prompts (the cap for text datasets); about
        the mean for a distribution."""
        if isinstance(self.dataset, SyntheticDataset) and self.dataset.input_len:
            return expected_length(self.dataset.input_len, self.max_input_tokens)
        return self.max_input_tokens

    def resolved_output_len(self) -> int:
        """Tokens each request generates (exactly, with ignore_eos; at most, without); about
        the mean for a distribution."""
        if isinstance(self.dataset, SyntheticDataset) and self.dataset.output_len:
            return expected_length(self.dataset.output_len, self.max_output_tokens)
        return self.max_output_tokens

    @property
    def served_over_http(self) -> bool:
        """True when the requests go to an OpenAI-compatible server through the streaming
        client (server mode, ``backend: endpoint``): token times are then the client's chunk
        receipt times, not the engine's steps."""
        return self.server is not None or self.backend == "endpoint"

    @property
    def concurrency(self) -> int:
        """Sequences in flight at once: the batch the measured run keeps busy."""
        return REGISTRY.get(self.backend).concurrency(self.backend_section, self.n_prompts)

    @property
    def window_k(self) -> int:
        """K of the ML.ENERGY steady-state window (and of its sizing, in waves of K): a closed
        loop's users, else :attr:`concurrency`."""
        if self.traffic.pattern == "closed_loop" and self.traffic.concurrency is not None:
            return self.traffic.concurrency
        return self.concurrency

    def _default_late_sections(self) -> set[str]:
        return {k for k, v in IDENTITY_WHEN_NON_DEFAULT.items() if getattr(self, k) == v}

    def to_json(self) -> str:
        """The JSON the harness receives in ``LLEM_CONFIG_JSON``.

        Sections that joined the schema later are left out at their defaults, so an image
        built before them still accepts the config of an experiment that does not use them.
        """
        return self.model_dump_json(exclude=self._default_late_sections() or None)


def _add_plugin_sections() -> None:
    """One optional section field per backend a plugin registered, and ``backend:`` accepting
    every registered name (the built-in ones are declared in the class body above)."""
    fields = ExperimentConfig.model_fields
    plugins = [spec for spec in REGISTRY if spec.name not in fields]
    if not plugins:
        return
    for spec in plugins:
        optional: Any = spec.section | None
        fields[spec.name] = FieldInfo(annotation=optional, default=None)
    literal: Any = Literal  # subscripted at run time with the registered names
    fields["backend"] = FieldInfo(annotation=literal[REGISTRY.names()], default=DEFAULT_BACKEND)
    ExperimentConfig.model_rebuild(force=True)


_add_plugin_sections()
