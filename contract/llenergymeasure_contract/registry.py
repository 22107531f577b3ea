"""The backend registry: one :class:`BackendSpec` per backend, read by every consumer.

A spec owns everything the host needs to know about a backend: its config section model and
the key that sets its concurrency, how many GPUs its parallel sizes need, its container
defaults (IPC, shared memory, ulimits), its image name, the Python modules it needs, its error
hints and the section fields the planner reads. The harness keeps its own registry of
engine classes keyed by the same names (``llenergymeasure_harness.backends.ENGINES``).

Adding a backend is its section model, its harness engine class and one registry entry:
either in :data:`BUILTIN_BACKENDS`, or from another distribution through two entry points,
read when this module is first imported (so host, harness and every subprocess agree)::

    [project.entry-points."llenergymeasure.backends"]
    toy = "toy_backend:SPEC"           # a BackendSpec (its section is a frozen pydantic model)
    [project.entry-points."llenergymeasure.engines"]
    toy = "toy_backend:ToyEngine"      # the harness's engine class

:class:`~llenergymeasure_contract.experiment.ExperimentConfig` gets one optional section
field per registered backend, and ``backend:`` accepts exactly the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from pydantic import BaseModel

from llenergymeasure_contract.backend_rules import (
    check_endpoint,
    check_pytorch,
    check_tensorrt,
    check_vllm,
)
from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.lora import VLLM_MAX_LORA_RANKS, LoraSupport
from llenergymeasure_contract.sections import PyTorchConfig, TensorRTConfig, VLLMConfig
from llenergymeasure_contract.serving import EndpointConfig

if TYPE_CHECKING:
    from llenergymeasure_contract.experiment import ExperimentConfig

Ulimit = int | tuple[int, int]  # a value, or (soft, hard); -1 is unlimited
#: A backend's cross-field rule of a whole experiment config (raises ``ValueError``).
ConfigRule = Callable[["ExperimentConfig"], None]


@dataclass(frozen=True)
class ContainerDefaults:
    """Container settings a backend needs unless the study overrides them.

    Attributes:
        ipc_mode: ``"host"`` for engines that share tensors between processes; ``None`` keeps
            Docker's private IPC namespace (then ``shm_size`` applies).
        shm_size: ``/dev/shm`` size when ``ipc_mode`` is not host.
        ulimits: name -> limit, or (soft, hard).
        env: Environment the engine needs in its container (paths relative to ``HOME``,
            which the runner points at a writable directory, are written ``$HOME/...``).
    """

    ipc_mode: str | None = None
    shm_size: str | None = "8g"
    ulimits: Mapping[str, Ulimit] = field(default_factory=lambda: MappingProxyType({}))
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ReleaseBase:
    """One upstream base image a release builds the backend's image on.

    Attributes:
        image: The base image reference.
        engine_version: The engine version the base carries (checked at build time).
    """

    image: str
    engine_version: str


@dataclass(frozen=True)
class BackendSpec:
    """Everything about one backend that is not its engine code.

    Attributes:
        name: The config name (``backend: NAME``) and its section key (``NAME:``).
        section: The pydantic model of its section.
        concurrency_key: The section field that sets the sequences in flight at once.
        image: The image name (``llenergymeasure/IMAGE``) and ``images/IMAGE/`` folder.
        engine: The engine's display name, for messages ("vLLM").
        modules: Python modules whose presence says the backend can run in this environment.
        parallel_keys: Section fields whose product is the GPUs one experiment needs.
        needs_gpu: False when it also runs on the CPU (``gpus: []``).
        model_is_served_name: True when ``model`` names what a running server serves (sent as
            each request's ``model``), not weights to load: a local folder there only lends its
            tokenizer, so a container keeps the name and reads the tokenizer from the mount.
        cap_concurrency: True when the engine never has more sequences in flight than
            prompts (continuous batching); False when the key is a fixed batch size.
        continuous_batching: True for engines that schedule requests continuously (the plan
            warns when too few prompts leave no steady state).
        uses_engine_cache: True when it builds engines worth caching between runs.
        container: Its container defaults.
        oom_hint: The fix to print when it runs out of GPU memory.
        kv_cache_dtype_key: The section field holding the KV-cache dtype (memory estimate).
        release_bases: The upstream bases a release builds its image on (one per CUDA major).
        untagged_base_cuda: (regex, CUDA version) for upstream bases whose tag does not carry
            their CUDA version (checked against the pulled image's ``ENV CUDA_VERSION`` in the
            release workflow).
        supports_loglikelihood: True when its engine returns log-probabilities of given text
            (``quality:`` tasks scored by log-likelihood, such as multiple choice, need it).
        loglikelihood_gap: For an engine that supports it, why one configuration cannot
            (with the fix), or None; None here: every configuration can.
        serve_command: Its OpenAI-compatible server's command, for messages ("vllm serve");
            ``None`` when it has no server mode.
        server_loglikelihood: True when that server returns them too (``/v1/completions``
            with ``echo`` and ``logprobs``).
        loglikelihood_key: A boolean key of its section that, set true, says the engine
            returns them (``backend: endpoint``: the user declares what the server can do).
        engine_distribution: The engine's installed distribution (its version keys the
            compile cache and is recorded); ``None`` when there is none.
        validate: Its cross-field rule of a whole experiment config (``ValueError`` with the
            fix), run after the rules every backend shares.
        lora: What it can do with LoRA adapters (``lora:``); None when it serves none.
        run_time_keys: Dotted config keys the loaded engine does not fix, so experiments that
            differ only in them can share one loaded engine (``execution.reuse_engine``);
            every other key is load-time (:func:`~llenergymeasure_contract.reuse.engine_key`).
    """

    name: str
    section: type[BaseModel]
    concurrency_key: str
    image: str
    engine: str
    modules: tuple[str, ...]
    parallel_keys: tuple[str, ...] = ()
    needs_gpu: bool = True
    model_is_served_name: bool = False
    cap_concurrency: bool = True
    continuous_batching: bool = False
    uses_engine_cache: bool = False
    container: ContainerDefaults = field(default_factory=ContainerDefaults)
    oom_hint: str = "use a smaller batch, a shorter sequence, more GPUs or quantization"
    kv_cache_dtype_key: str | None = None
    release_bases: tuple[ReleaseBase, ...] = ()
    untagged_base_cuda: tuple[tuple[str, str], ...] = ()
    supports_loglikelihood: bool = True
    loglikelihood_gap: Callable[[ExperimentConfig], str | None] | None = None
    serve_command: str | None = None
    server_loglikelihood: bool = False
    loglikelihood_key: str | None = None
    lora: LoraSupport | None = None
    run_time_keys: tuple[str, ...] = ()
    engine_distribution: str | None = None
    validate: ConfigRule | None = None

    def engine_version(self) -> str | None:
        """The installed version of the engine distribution (``None``: none, not installed)."""
        from importlib import metadata

        if self.engine_distribution is None:
            return None
        try:
            return metadata.version(self.engine_distribution)
        except metadata.PackageNotFoundError:
            return None

    @property
    def supports_lora(self) -> bool:
        """True when experiments on it may have a ``lora:`` section."""
        return self.lora is not None

    @property
    def concurrency_path(self) -> str:
        """The dotted key that sets concurrency, e.g. ``vllm.max_num_seqs``."""
        return f"{self.name}.{self.concurrency_key}"

    def concurrency(self, section: BaseModel, n_prompts: int) -> int:
        """Sequences in flight at once for this section and prompt count."""
        value = int(getattr(section, self.concurrency_key))
        return min(n_prompts, value) if self.cap_concurrency else value

    def kv_cache_dtype(self, section: BaseModel) -> str:
        """The KV-cache dtype the section sets (``"auto"``: the model's)."""
        if self.kv_cache_dtype_key is None:
            return "auto"
        return str(getattr(section, self.kv_cache_dtype_key))

    def gpus_needed(self, section: BaseModel) -> int:
        """GPUs one experiment needs: the product of the parallel sizes (1 without any)."""
        n = 1
        for key in self.parallel_keys:
            n *= int(getattr(section, key))
        return n


#: Keys no engine fixes at load: the requests (count, lengths, dataset, traffic), how they are
#: decoded, and the measurement around them. ``random_seed`` is not among them (vLLM and the
#: servers seed the engine at load), nor ``tokenizer``, ``gpus`` or ``server``. A key that is
#: not listed is load-time, so a new key never lets two different engines pass for one.
COMMON_RUN_TIME_KEYS: tuple[str, ...] = (
    "name",
    "dataset",
    "n_prompts",
    "max_input_tokens",
    "max_output_tokens",
    "ignore_eos",
    "decoder",
    "warmup",
    "baseline",
    "energy",
    "traffic",
    "quality",  # lm-eval tasks run on whatever engine is loaded (its own window, after)
)


# Engines that share tensors between processes need the host IPC namespace (the vLLM and
# TensorRT-LLM docs both run with --ipc=host); PyTorch's generate() only needs a /dev/shm
# larger than Docker's 64 MB default.
BUILTIN_BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="pytorch",
        section=PyTorchConfig,
        concurrency_key="batch_size",
        image="pytorch",
        engine="transformers",
        modules=("torch", "transformers"),
        engine_distribution="transformers",
        validate=check_pytorch,
        # transformers serve ignores echo and logprobs on /v1/completions (transformers 5.x
        # cli/serving/completion.py: UNUSED_LEGACY_COMPLETION_FIELDS): no scores.
        serve_command="transformers serve",
        needs_gpu=False,
        cap_concurrency=False,
        container=ContainerDefaults(ipc_mode=None, shm_size="8g"),
        # peft: every adapter loaded onto the model at load, none swapped (transformers
        # serve has no adapter support, so no server mode).
        lora=LoraSupport(swaps=False, cpu_cache=False),
        # generate() takes the batch per call; the model does not fix it at load
        run_time_keys=(*COMMON_RUN_TIME_KEYS, "pytorch.batch_size"),
        release_bases=(
            ReleaseBase("pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime", "2.11.0"),
            ReleaseBase("pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime", "2.11.0"),
        ),
    ),
    BackendSpec(
        name="vllm",
        section=VLLMConfig,
        concurrency_key="max_num_seqs",
        image="vllm",
        engine="vLLM",
        modules=("vllm",),
        engine_distribution="vllm",
        validate=check_vllm,
        # /v1/completions with echo returns the prompt's logprobs (prompt_logprobs)
        serve_command="vllm serve",
        server_loglikelihood=True,
        parallel_keys=("tensor_parallel_size", "pipeline_parallel_size"),
        continuous_batching=True,
        run_time_keys=COMMON_RUN_TIME_KEYS,
        container=ContainerDefaults(
            ipc_mode="host",
            env=MappingProxyType(
                {"VLLM_CACHE_ROOT": "$HOME/.cache/vllm", "VLLM_NO_USAGE_STATS": "1"}
            ),
        ),
        oom_hint="lower vllm.max_num_seqs, vllm.max_model_len or vllm.gpu_memory_utilization "
        "(leave room for other processes), raise tensor_parallel_size, or quantize",
        kv_cache_dtype_key="kv_cache_dtype",
        lora=LoraSupport(swaps=True, cpu_cache=True, server=True, rank_choices=VLLM_MAX_LORA_RANKS),
        release_bases=(
            ReleaseBase("vllm/vllm-openai:v0.33.0-cu129", "0.33.0"),
            ReleaseBase("vllm/vllm-openai:v0.33.0", "0.33.0"),
        ),
        # vllm/vllm-openai:v0.3x.y -> CUDA 13.0 (vllm-project/vllm docker/versions.json:
        # CUDA_VERSION 13.0.x; the "-cu129" variants carry 12.9 in the tag). Older releases
        # are left out on purpose: they must name their CUDA or be inspected.
        untagged_base_cuda=((r"^(docker\.io/)?vllm/vllm-openai:v0\.3\d\.\d+$", "13.0"),),
    ),
    BackendSpec(
        name="tensorrt",
        section=TensorRTConfig,
        concurrency_key="max_batch_size",
        image="trtllm",
        engine="TensorRT-LLM",
        modules=("tensorrt_llm",),
        # From each request's context logits: the PyTorch flow always, a TensorRT engine
        # only when built with gather_context_logits (TensorRTConfig.loglikelihood_gap).
        loglikelihood_gap=lambda c: c.tensorrt.loglikelihood_gap() if c.tensorrt else None,
        engine_distribution="tensorrt_llm",
        validate=check_tensorrt,
        parallel_keys=("tensor_parallel_size", "pipeline_parallel_size"),
        continuous_batching=True,
        uses_engine_cache=True,
        serve_command="trtllm-serve",
        # max_input_tokens sizes the built engine (max_input_len) unless the section sets it
        run_time_keys=tuple(k for k in COMMON_RUN_TIME_KEYS if k != "max_input_tokens"),
        # TensorRT-LLM's documented run: --ulimit memlock=-1 --ulimit stack=67108864
        container=ContainerDefaults(
            ipc_mode="host", ulimits=MappingProxyType({"memlock": -1, "stack": 67108864})
        ),
        oom_hint="lower tensorrt.max_batch_size, max_num_tokens, max_seq_len or "
        "kv_cache_free_gpu_memory_fraction, raise tensor_parallel_size, or quantize",
        # LLM API lora_config (max_loras GPU slots, max_cpu_loras host cache); trtllm-serve's
        # adapter loading is not wired here, so no server mode.
        lora=LoraSupport(swaps=True, cpu_cache=True),
        # TensorRT-LLM ships one CUDA per release: 13.0 since 1.2 (its release notes), so
        # there is no CUDA 12 variant.
        release_bases=(ReleaseBase("nvcr.io/nvidia/tensorrt-llm/release:1.2.1", "1.2.1"),),
        untagged_base_cuda=((r"^nvcr\.io/nvidia/tensorrt-llm/release:1\.2\.\d+$", "13.0"),),
    ),
    # An OpenAI-compatible server that is already running: only the streaming client runs
    # here (in the pytorch image, or locally); energy from NVML on the listed gpus.
    BackendSpec(
        name="endpoint",
        section=EndpointConfig,
        concurrency_key="max_concurrency",
        image="pytorch",
        engine="OpenAI-compatible server",
        modules=("aiohttp",),
        # A chat-only server scores no given text; one that answers /v1/completions with
        # echo + logprobs (vLLM, SGLang) does, once the user says so.
        supports_loglikelihood=False,
        loglikelihood_key="completions_logprobs",
        validate=check_endpoint,
        needs_gpu=False,
        model_is_served_name=True,
        run_time_keys=COMMON_RUN_TIME_KEYS,
        container=ContainerDefaults(ipc_mode=None, shm_size="1g"),
        oom_hint="the server ran out of memory: lower its own batch or context limits",
        # The request's model field names an adapter the server already serves.
        lora=LoraSupport(swaps=True, cpu_cache=False, kinds=("served",)),
    ),
)


class BackendRegistry:
    """Name -> :class:`BackendSpec`, in registration order."""

    def __init__(self, specs: tuple[BackendSpec, ...] = ()) -> None:
        self._specs: dict[str, BackendSpec] = {}
        self._names: tuple[str, ...] = ()
        for spec in specs:
            self.register(spec)

    def register(self, spec: BackendSpec) -> None:
        """Add a backend.

        Raises:
            ValueError: the name is taken.
        """
        if spec.name in self._specs:
            raise ValueError(f"backend {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        self._names = tuple(self._specs)

    def get(self, name: str) -> BackendSpec:
        """The spec of ``name``.

        Raises:
            ConfigError: no such backend.
        """
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown backend {name!r}; expected one of {', '.join(self._specs)}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return self._names

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[BackendSpec]:
        return iter(tuple(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)


#: Entry-point group of :class:`BackendSpec` objects from other distributions.
BACKENDS_ENTRY_POINTS = "llenergymeasure.backends"


def _plugin_specs() -> list[BackendSpec]:
    """The specs other installed distributions register (entry points), in name order.

    Raises:
        ConfigError: an entry point does not load or is not a :class:`BackendSpec` (a broken
            plugin must not be skipped silently: its experiments would vanish from a study).
    """
    from importlib.metadata import entry_points

    specs = []
    for ep in sorted(entry_points(group=BACKENDS_ENTRY_POINTS), key=lambda e: e.name):
        try:
            spec = ep.load()
        except Exception as exc:  # any import failure of a plugin is reported the same way
            raise ConfigError(
                f"backend plugin {ep.name!r} ({ep.value}) failed to load: {exc}",
                hint="fix or uninstall the distribution that provides it",
            ) from exc
        if not isinstance(spec, BackendSpec) or spec.name != ep.name:
            raise ConfigError(
                f"backend plugin {ep.name!r} ({ep.value}) is not a BackendSpec named {ep.name!r}",
                hint="the entry point must name a BackendSpec whose name is the entry point's",
            )
        specs.append(spec)
    return specs


#: The registry every consumer reads: the built-in backends, then installed plugins.
REGISTRY = BackendRegistry((*BUILTIN_BACKENDS, *_plugin_specs()))


def get_backend_spec(name: str) -> BackendSpec:
    """The registered spec of ``name`` (see :meth:`BackendRegistry.get`)."""
    return REGISTRY.get(name)


__all__ = [
    "BACKENDS_ENTRY_POINTS",
    "BUILTIN_BACKENDS",
    "COMMON_RUN_TIME_KEYS",
    "REGISTRY",
    "BackendRegistry",
    "BackendSpec",
    "ConfigRule",
    "ContainerDefaults",
    "ReleaseBase",
    "Ulimit",
    "get_backend_spec",
]
