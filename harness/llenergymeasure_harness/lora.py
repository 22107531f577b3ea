"""LoRA adapters in the harness: generated on the spot, assigned to requests, accounted for.

* :func:`write_generated_adapter` writes a seeded random adapter in peft's on-disk format
  (``adapter_config.json`` + ``adapter_model.safetensors``) from the architecture's shapes
  alone: no download, no peft, no torch (numpy when present, else the standard library). The
  tensor names and shapes are the ones ``peft.PeftModel.from_pretrained`` and vLLM's LoRA
  loader both read: ``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_A.weight``
  of shape ``[r, in_features]`` and ``...lora_B.weight`` of shape ``[out_features, r]``. ``B``
  is non-zero (peft initialises it to zero, which would leave the outputs equal to the base
  model's), so an adapter changes what the model generates.
* :class:`AdapterSet` is what a backend loads: every adapter of ``lora:`` with its served
  name, its directory (or hub id) and a stable integer id (vLLM's ``lora_int_id``).
* :func:`assign_adapters` gives every request its adapter with the section's seeded policy
  (:func:`llenergymeasure_contract.lora.select_adapters`), backend-independently.
* :func:`lora_outcome` is the result's per-adapter account: requests, tokens and the energy
  apportioned to each adapter by its share of the run's output tokens, with what the engine
  itself reported about its adapters over the measured window (:class:`LoraCounts`).
* :class:`LoraProbe` is how a backend tells those counts: the harness calls ``begin()`` just
  before the measured window opens and ``end()`` just after it closes (both outside it). For
  vLLM, :class:`GaugeProbe` reads the ``vllm:lora_requests_info`` gauge (``GET /metrics`` of
  ``vllm serve`` or of an endpoint, or the offline ``LLM.get_metrics()`` when stat logging is
  on) at those two edges and keeps the label sets that changed in between
  (:func:`gauge_window_counts`).

What vLLM reports (read in vLLM 0.26.0's source, ``vllm/v1/metrics/loggers.py`` and
``stats.py``): every engine step with outputs, ``PrometheusStatLogger.record`` sets the gauge
``vllm:lora_requests_info{max_lora, running_lora_adapters, waiting_lora_adapters}`` to the
current wall-clock time, the two adapter labels being comma-joined adapter names. A label set
seen again is the same series, updated; one never seen before is a new series, and old ones
stay. So the series whose value changed between the two reads are exactly the label sets of
the engine steps inside the window, whatever the clocks. The labels carry names, not counts;
in 0.26 both list every adapter with a request in the engine, waiting or running
(``LoRARequestStates.update_scheduler_stats`` writes both dicts for every adapter it tracks),
so the two maxima are equal there. vLLM keeps no load or eviction count: its LoRA manager
(``vllm/lora/worker_manager.py`` ``LRUCacheWorkerLoRAManager.add_adapter``,
``model_manager.py`` ``activate_adapter`` / ``remove_oldest_adapter``) only logs at DEBUG level
in the engine-core process, so ``adapter_loads`` / ``adapter_swaps`` stay None for vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import shutil
import struct
import tempfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_contract.lora import AdapterRef, GenerateSpec, select_adapters
from llenergymeasure_contract.results import AdapterShare, LoraOutcome
from llenergymeasure_harness.backends.base import GenerationRequest, RequestRecord

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Standard deviation of the generated ``B`` matrices (``A`` is scaled by 1/sqrt(in_features),
#: as a Kaiming-style init would be).
B_STD = 0.02

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


def module_shapes(hf_config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``module -> (in_features, out_features)`` of a Llama-family decoder layer."""
    hidden = int(hf_config["hidden_size"])
    heads = int(hf_config["num_attention_heads"])
    kv_heads = int(hf_config.get("num_key_value_heads") or heads)
    head_dim = int(hf_config.get("head_dim") or hidden // heads)
    inter = int(hf_config["intermediate_size"])
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _normal(rng_seed: int, n: int, std: float) -> bytes:
    """``n`` float32 draws from N(0, std^2), little-endian bytes (seeded)."""
    try:
        import numpy as np
    except ImportError:
        rng = random.Random(rng_seed)
        floats = array("f", (rng.gauss(0.0, std) for _ in range(n)))
        return floats.tobytes()  # the machines we run on are little-endian
    gen = np.random.default_rng(rng_seed)
    draws = gen.standard_normal(n, dtype=np.float32) * np.float32(std)
    return bytes(draws.astype("<f4").tobytes())


def write_safetensors(path: Path, tensors: list[tuple[str, list[int], bytes]]) -> None:
    """Write float32 tensors in the safetensors format (8-byte header size, JSON header,
    data), without the safetensors package."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, data in tensors:
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for _, _, data in tensors:
            fh.write(data)


def write_generated_adapter(
    out_dir: Path, hf_config: dict[str, Any], spec: GenerateSpec, index: int, base_model: str
) -> Path:
    """Write adapter ``index`` of ``spec`` for the architecture ``hf_config`` into ``out_dir``.

    Seeded by ``spec.seed + index`` (one stream per tensor, so the values do not depend on
    which modules come first).

    Raises:
        ConfigError: the architecture has no shape for a target module.
    """
    try:
        shapes = module_shapes(hf_config)
        layers = int(hf_config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot generate LoRA adapters: the architecture config lacks {exc}",
            hint="use a built-in architecture or a model directory with a Llama-family config",
        ) from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    r = spec.rank
    seed = spec.seed + index
    tensors: list[tuple[str, list[int], bytes]] = []
    n = 0
    for layer in range(layers):
        for module in spec.target_modules:
            d_in, d_out = shapes[module]
            block = "self_attn" if module in _ATTENTION else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            tensors.append(
                (
                    f"{prefix}.lora_A.weight",
                    [r, d_in],
                    _normal(seed * 100_003 + n, r * d_in, 1.0 / math.sqrt(d_in)),
                )
            )
            tensors.append(
                (
                    f"{prefix}.lora_B.weight",
                    [d_out, r],
                    _normal(seed * 100_003 + n + 1, d_out * r, B_STD),
                )
            )
            n += 2
    tensors.sort(key=lambda t: t[0])
    write_safetensors(out_dir / ADAPTER_WEIGHTS, tensors)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": spec.alpha if spec.alpha is not None else r,
        "lora_dropout": 0.0,
        "target_modules": list(spec.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (out_dir / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
    # How it was made, apart: peft warns about keys its LoraConfig does not know.
    made = {"seed": seed, "index": index, "a_std": "1/sqrt(in_features)", "b_std": B_STD}
    (out_dir / "llem_generated.json").write_text(json.dumps(made), encoding="utf-8")
    return out_dir


@dataclass(frozen=True)
class Adapter:
    """One adapter ready to load.

    Attributes:
        name: The name requests use (and a server serves it under).
        path: Its directory, a hub id (``kind == "hub"``) or None (``served``: the running
            server's own).
        int_id: A stable id from 1 (vLLM's ``lora_int_id``; 0 means "no adapter" there).
        rank: Its rank, when known.
        kind: ``generated``, ``path``, ``hub`` or ``served``.
    """

    name: str
    path: str | None
    int_id: int
    rank: int | None
    kind: str


@dataclass
class AdapterSet:
    """The experiment's adapters; generated ones live in a directory :meth:`close` removes."""

    adapters: list[Adapter] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def by_name(self) -> dict[str, Adapter]:
        """Adapters by name."""
        return {a.name: a for a in self.adapters}

    def close(self) -> None:
        """Remove the generated adapters. Safe to call twice."""
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _architecture_config(config: ExperimentConfig) -> dict[str, Any]:
    from llenergymeasure_contract.architecture import resolve_architecture

    arch = resolve_architecture(config.model)
    if arch is None:
        raise ConfigError(
            f"generated LoRA adapters need the shapes of {config.model!r}, which is neither a "
            "built-in architecture nor a local directory with config.json",
            hint="use load_format: dummy with a built-in architecture, or a local model path",
        )
    return dict(arch.hf_config)


def prepare_adapters(config: ExperimentConfig, workdir: Path | None = None) -> AdapterSet:
    """Every adapter of ``config.lora``, generated ones written under ``workdir`` (a new
    temporary directory when None); an empty set without ``lora:``."""
    if config.lora is None:
        return AdapterSet()
    refs: list[AdapterRef] = config.lora.refs()
    out = AdapterSet()
    hf_config: dict[str, Any] | None = None
    for i, ref in enumerate(refs, start=1):
        path: str | None = ref.source
        if ref.kind == "generated":
            assert ref.spec is not None
            if out.workdir is None:
                out.workdir = Path(tempfile.mkdtemp(prefix="llem-lora-", dir=workdir))
            hf_config = hf_config or _architecture_config(config)
            path = str(
                write_generated_adapter(
                    out.workdir / ref.name, hf_config, ref.spec, ref.index, config.model
                )
            )
        elif (
            ref.kind == "path" and path is not None and not (Path(path) / ADAPTER_CONFIG).is_file()
        ):
            raise ConfigError(f"LoRA adapter {ref.name!r}: {path} holds no {ADAPTER_CONFIG}")
        out.adapters.append(Adapter(ref.name, path, i, ref.rank, ref.kind))
    logger.info("LoRA: %d adapter(s) ready (%s)", len(out.adapters), config.lora.selection)
    return out


def assign_adapters(
    config: ExperimentConfig, requests: list[GenerationRequest]
) -> list[GenerationRequest]:
    """``requests`` with ``adapter`` set by the ``lora:`` selection policy (unchanged
    without ``lora:``). The policy is seeded by ``random_seed``."""
    if config.lora is None:
        return requests
    names = [r.name for r in config.lora.refs()]
    picks = select_adapters(
        len(requests),
        names,
        config.lora.selection,
        seed=config.random_seed,
        zipf_s=config.lora.zipf_s,
    )
    return [dataclasses.replace(r, adapter=a) for r, a in zip(requests, picks, strict=True)]


def request_adapter_columns(
    requests: Sequence[GenerationRequest], records: Sequence[RequestRecord]
) -> dict[str, list[Any]]:
    """The ``adapter`` column of requests.parquet, in record order (None: the base model)."""
    by_id = {r.request_id: r.adapter for r in requests}
    return {"adapter": [by_id.get(rec.request_id) for rec in records]}


# --------------------------------------------------------------------------- engine counts

#: vLLM's LoRA gauge (``vllm/v1/metrics/loggers.py``, ``PrometheusStatLogger``): one series per
#: label set, valued the wall-clock time of the last engine step that had that label set.
LORA_GAUGE = "vllm:lora_requests_info"
RUNNING_LABEL = "running_lora_adapters"
WAITING_LABEL = "waiting_lora_adapters"

#: The counts of :class:`LoraCounts`, as ``LoraOutcome`` names them.
COUNT_NAMES = ("adapter_loads", "adapter_swaps", "max_adapters_running", "max_adapters_waiting")

#: Why vLLM's load and swap counts are None.
VLLM_NO_LOAD_COUNTS = (
    "vLLM exports no adapter load or eviction count (its LoRA manager logs them only at DEBUG "
    "level, in the engine-core process)"
)

#: One series of the gauge: its ``(label, value)`` pairs, sorted.
LabelSet = tuple[tuple[str, str], ...]

_SAMPLE = re.compile(
    r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\S+)?\s*$"
)
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_ESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    """A label value of the text exposition format with its escapes (backslash, double quote,
    newline) undone."""
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _labels(text: str) -> dict[str, str] | None:
    """``a="x",b="y"`` as a dict (None: not wholly ``name="value"`` pairs)."""
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            return None
        labels[match[1]] = _unescape(match[2])
        pos = match.end()
    return labels


def parse_lora_gauge(text: str) -> dict[LabelSet, float]:
    """The :data:`LORA_GAUGE` series of a Prometheus text exposition (``GET /metrics``):
    label set -> value. Other metrics, comments and malformed lines are skipped."""
    out: dict[LabelSet, float] = {}
    for line in text.splitlines():
        if not line.startswith(LORA_GAUGE):
            continue
        match = _SAMPLE.match(line)
        if match is None or match["name"] != LORA_GAUGE:
            continue
        try:
            value = float(match["value"])
        except ValueError:
            continue
        labels = _labels(match["labels"] or "")
        if labels is not None:
            out[tuple(sorted(labels.items()))] = value
    return out


def lora_gauge_from_metrics(metrics: Iterable[Any]) -> dict[LabelSet, float]:
    """The same series from the offline ``LLM.get_metrics()`` (``vllm.v1.metrics.reader``
    objects with ``name``, ``labels`` and ``value``)."""
    out: dict[LabelSet, float] = {}
    for metric in metrics:
        if getattr(metric, "name", None) != LORA_GAUGE:
            continue
        value = getattr(metric, "value", None)
        if isinstance(value, int | float):
            labels = dict(getattr(metric, "labels", None) or {})
            out[tuple(sorted((str(k), str(v)) for k, v in labels.items()))] = float(value)
    return out


def _names(labels: LabelSet, label: str) -> list[str]:
    return [n for n in dict(labels).get(label, "").split(",") if n]


@dataclass(frozen=True)
class LoraCounts:
    """What the engine reported about its adapters over one measured window.

    Attributes:
        adapter_loads: Adapters loaded onto the model (None: not reported).
        adapter_swaps: Adapters swapped out for others (None: not reported).
        max_adapters_running: The most adapters vLLM's ``running_lora_adapters`` label listed
            at one engine step in the window.
        max_adapters_waiting: The same for ``waiting_lora_adapters``.
        provenance: Count name -> where it came from, or why it is None.
    """

    adapter_loads: int | None = None
    adapter_swaps: int | None = None
    max_adapters_running: int | None = None
    max_adapters_waiting: int | None = None
    provenance: dict[str, str] = field(default_factory=dict)

    @classmethod
    def unreported(cls, reason: str, **known: tuple[int, str]) -> LoraCounts:
        """Every count None for ``reason``, except ``known`` ones: name -> (value, source)."""
        values = {name: value for name, (value, _) in known.items()}
        provenance = {name: known[name][1] if name in known else reason for name in COUNT_NAMES}
        return cls(**values, provenance=provenance)


def gauge_window_counts(
    before: dict[LabelSet, float], after: dict[LabelSet, float], source: str
) -> LoraCounts:
    """The counts of the window between two reads of :data:`LORA_GAUGE` (see the module doc):
    the label sets whose value changed (or that appeared) are the engine steps inside it."""
    window = [labels for labels, value in after.items() if before.get(labels) != value]
    if not after:
        reason = f"{source} carries no {LORA_GAUGE} series"
    elif not window:
        reason = f"no engine step updated {LORA_GAUGE} ({source}) in the measured window"
    else:
        seen = f"over the {len(window)} label set(s) of the measured window's engine steps"
        return LoraCounts(
            max_adapters_running=max(len(_names(lab, RUNNING_LABEL)) for lab in window),
            max_adapters_waiting=max(len(_names(lab, WAITING_LABEL)) for lab in window),
            provenance={
                "adapter_loads": VLLM_NO_LOAD_COUNTS,
                "adapter_swaps": VLLM_NO_LOAD_COUNTS,
                "max_adapters_running": f"{LORA_GAUGE} label {RUNNING_LABEL}, {source}: the "
                f"most adapters at one engine step, {seen}",
                "max_adapters_waiting": f"{LORA_GAUGE} label {WAITING_LABEL}, {source}: the "
                f"most adapters at one engine step, {seen}",
            },
        )
    return vllm_unreported(reason)


def vllm_unreported(reason: str) -> LoraCounts:
    """vLLM's counts when its gauge gives nothing: None, for ``reason`` (and, for the load and
    swap counts, :data:`VLLM_NO_LOAD_COUNTS`)."""
    counts = LoraCounts.unreported(reason)
    provenance = {
        **counts.provenance,
        "adapter_loads": VLLM_NO_LOAD_COUNTS,
        "adapter_swaps": VLLM_NO_LOAD_COUNTS,
    }
    return dataclasses.replace(counts, provenance=provenance)


class LoraProbe(Protocol):
    """A backend's adapter counts over the measured window (``backend.lora_probe``)."""

    def begin(self) -> None:
        """Called just before the measured window opens."""

    def end(self) -> LoraCounts:
        """Called just after it closes: the counts over it."""


@dataclass
class FixedProbe:
    """Counts known without looking at the window (or known not to be reported)."""

    counts: LoraCounts

    def begin(self) -> None:
        """Nothing to read."""

    def end(self) -> LoraCounts:
        """The fixed counts."""
        return self.counts


class GaugeProbe:
    """Reads :data:`LORA_GAUGE` with ``read`` at both edges of the window (outside it).

    ``read`` returns the gauge's series (:func:`parse_lora_gauge` of ``GET /metrics``, or
    :func:`lora_gauge_from_metrics`); ``source`` says where from, for the provenance. A read
    that fails leaves the counts None with the error as the reason; the run goes on.
    """

    def __init__(self, read: Callable[[], dict[LabelSet, float]], source: str) -> None:
        self._read = read
        self.source = source
        self._before: dict[LabelSet, float] | None = None
        self._error: str | None = None

    def _safe_read(self) -> dict[LabelSet, float] | None:
        try:
            return self._read()
        except Exception as exc:  # informational: never sinks the measurement
            logger.warning("could not read %s for the LoRA counts: %s", self.source, exc)
            self._error = f"could not read {self.source}: {type(exc).__name__}: {exc}"
            return None

    def begin(self) -> None:
        """Read the gauge before the window."""
        self._error = None
        self._before = self._safe_read()

    def end(self) -> LoraCounts:
        """Read it again and keep what changed in between."""
        after = self._safe_read() if self._before is not None else None
        if self._before is None or after is None:
            return vllm_unreported(self._error or f"{self.source} was not read")
        return gauge_window_counts(self._before, after, self.source)


def lora_outcome(
    config: ExperimentConfig,
    requests: Sequence[GenerationRequest],
    records: Sequence[RequestRecord],
    energy_j: float | None,
    counts: LoraCounts | None = None,
) -> LoraOutcome | None:
    """The result's ``lora`` section (None without ``lora:``).

    Energy is apportioned to each adapter by its share of the run's output tokens: the run's
    GPU energy (one window over all requests, batched together, so it cannot be metered per
    request) times ``adapter output tokens / all output tokens``. Its J/output token is then
    the run's for every adapter; what differs between adapters is how much of the work (and
    so of the energy) each took.
    """
    if config.lora is None:
        return None
    by_id = {r.request_id: r.adapter for r in requests}
    names = [r.name for r in config.lora.refs()]
    rows: dict[str, dict[str, Any]] = {
        n: {"adapter": n, "requests": 0, "input_tokens": 0, "output_tokens": 0} for n in names
    }
    for rec in records:
        name = by_id.get(rec.request_id)
        if name is None or name not in rows:
            continue
        row = rows[name]
        row["requests"] += 1
        row["input_tokens"] += rec.input_tokens
        row["output_tokens"] += rec.output_tokens
    total_out = sum(r["output_tokens"] for r in rows.values())
    for row in rows.values():
        share = row["output_tokens"] / total_out if total_out else None
        row["energy_j"] = energy_j * share if energy_j is not None and share is not None else None
        row["energy_j_per_output_token"] = (
            row["energy_j"] / row["output_tokens"]
            if row["energy_j"] is not None and row["output_tokens"]
            else None
        )
    if counts is None:
        counts = LoraCounts.unreported(f"llem reads no adapter counts from {config.backend}")
    return LoraOutcome(
        n_adapters=len(names),
        selection=config.lora.selection,
        max_loras=config.lora.resolved_max_loras,
        max_lora_rank=config.lora.max_lora_rank,
        adapter_loads=counts.adapter_loads,
        adapter_swaps=counts.adapter_swaps,
        max_adapters_running=counts.max_adapters_running,
        max_adapters_waiting=counts.max_adapters_waiting,
        counts_provenance=dict(counts.provenance),
        per_adapter=[AdapterShare.model_validate(row) for row in rows.values()],
    )


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "COUNT_NAMES",
    "LORA_GAUGE",
    "VLLM_NO_LOAD_COUNTS",
    "Adapter",
    "AdapterSet",
    "FixedProbe",
    "GaugeProbe",
    "LabelSet",
    "LoraCounts",
    "LoraProbe",
    "assign_adapters",
    "gauge_window_counts",
    "lora_gauge_from_metrics",
    "lora_outcome",
    "module_shapes",
    "parse_lora_gauge",
    "prepare_adapters",
    "request_adapter_columns",
    "vllm_unreported",
    "write_generated_adapter",
    "write_safetensors",
]
