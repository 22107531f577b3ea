"""Length distributions for synthetic prompts, and named workload profiles.

A synthetic dataset's ``input_len`` / ``output_len`` is an integer (every request the same) or
a distribution, chosen by ``dist`` (:data:`LengthSpec`)::

    {dist: uniform, min, max}            integers uniform on [min, max]
    {dist: normal, mean, stddev}         rounded normal draws
    {dist: lognormal, mean, stddev}      mean and stddev OF THE LENGTHS (not of log length):
                                         sigma^2 = ln(1 + (stddev/mean)^2),
                                         mu = ln(mean) - sigma^2 / 2
    {dist: pareto, mean, shape}          Pareto type I, scale = mean * (shape - 1) / shape
                                         (as ML.ENERGY's LengthControl); shape > 1
    {dist: exponential, mean}
    {dist: empirical, bins, counts}      a histogram: len(bins) = len(counts) + 1 edges, a draw
                                         picks a bin by count, then a length uniform in it
    {dist: empirical, values, counts}    point masses (counts optional: equal weights)
    {dist: empirical, path}              a file of lengths or a histogram (read by the study
                                         loader, relative to the study file, and embedded)

Every distribution takes ``min`` (default 1) and ``max`` (default none). A draw outside
``[min, max]`` is **clipped** to it, not redrawn: mass past the cap piles up at the cap, the
way an engine's ``max_tokens`` cuts long answers (ML.ENERGY's lm-arena-chat outputs show 0.18 %
at their 4,096 cap). ``max_input_tokens`` / ``max_output_tokens`` stay the caps: draws are
clipped at them as well, a ``min`` above them is an error, and when a distribution has a
``max`` and the cap is not given, the cap defaults to that ``max``.

A **workload profile** (:class:`WorkloadProfile`) is a pair of length specs with provenance
(source, date, the statistics it reproduces). Built-in profiles ship in
``llenergymeasure_contract/workloads/*.json`` and are named in a study as
``dataset: {profile: lm-arena-chat}``; a user's own profile is a YAML or JSON file in the same
format (``profile: ./my-profile.yaml``, relative to the study file), read by the study loader.
An explicit ``input_len`` / ``output_len`` beside ``profile`` overrides the profile's.

This module only describes and validates (no numpy): the harness draws the lengths
(``llenergymeasure_harness.lengths``), seeded, the same on every backend.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llenergymeasure_contract.strict import StrictModel


class _Model(StrictModel):
    """Frozen, no unknown keys, no NaN/inf, no booleans for numbers (:mod:`.strict`)."""


# --------------------------------------------------------------------------- distributions


class _Dist(_Model):
    """Bounds every distribution takes; draws outside them are clipped (see module doc)."""

    min: int = Field(1, ge=1, description="Shortest length; shorter draws are clipped up.")
    max: int | None = Field(None, ge=1, description="Longest length; longer draws are clipped.")

    @field_validator("max")
    @classmethod
    def _max_not_below_min(cls, value: int | None, info: ValidationInfo) -> int | None:
        low = info.data.get("min")
        if value is not None and isinstance(low, int) and value < low:
            raise ValueError(f"max ({value}) is below min ({low})")
        return value


def _mean_in_bounds(value: float, info: ValidationInfo) -> float:
    low, high = info.data.get("min"), info.data.get("max")
    if isinstance(low, int) and value < low:
        raise ValueError(f"mean ({value:g}) is below min ({low})")
    if isinstance(high, int) and value > high:
        raise ValueError(f"mean ({value:g}) is above max ({high})")
    return value


class UniformLengths(_Dist):
    """Integers uniform on ``[min, max]`` (both given)."""

    dist: Literal["uniform"]
    min: int = Field(ge=1)
    max: int = Field(ge=1)  # required here


class NormalLengths(_Dist):
    """Rounded normal draws with this mean and standard deviation."""

    dist: Literal["normal"]
    mean: float = Field(gt=0)
    stddev: float = Field(ge=0)

    _mean = field_validator("mean")(_mean_in_bounds)


class LognormalLengths(_Dist):
    """Lognormal lengths given by the mean and standard deviation of the lengths themselves."""

    dist: Literal["lognormal"]
    mean: float = Field(gt=0)
    stddev: float = Field(gt=0)

    _mean = field_validator("mean")(_mean_in_bounds)

    def mu_sigma(self) -> tuple[float, float]:
        """``(mu, sigma)`` of the underlying normal (numpy's lognormal parameters)."""
        sigma2 = math.log1p((self.stddev / self.mean) ** 2)
        return math.log(self.mean) - sigma2 / 2.0, math.sqrt(sigma2)


class ParetoLengths(_Dist):
    """Pareto type I with this mean: scale ``x_m = mean (shape - 1) / shape``."""

    dist: Literal["pareto"]
    mean: float = Field(gt=0)
    shape: float = Field(gt=0)

    _mean = field_validator("mean")(_mean_in_bounds)

    @field_validator("shape")
    @classmethod
    def _finite_mean(cls, value: float) -> float:
        if value <= 1.0:
            raise ValueError(
                f"must be > 1 for a Pareto distribution given by its mean (got {value:g}); "
                "with shape <= 1 the mean is infinite"
            )
        return value

    @property
    def scale(self) -> float:
        """``x_m``, the smallest value before clipping."""
        return self.mean * (self.shape - 1.0) / self.shape


class ExponentialLengths(_Dist):
    """Exponential lengths with this mean."""

    dist: Literal["exponential"]
    mean: float = Field(gt=0)

    _mean = field_validator("mean")(_mean_in_bounds)


class EmpiricalLengths(_Dist):
    """A histogram (``bins`` edges + ``counts``), point masses (``values`` [+ ``counts``]), or
    a file (``path``), which the study loader reads and embeds as one of the other two."""

    dist: Literal["empirical"]
    bins: list[float] | None = Field(None, description="Histogram edges, len(counts) + 1.")
    values: list[int] | None = Field(None, description="Lengths (point masses).")
    counts: list[int] | None = Field(None, description="Per bin, or per value (weights).")
    path: str | None = Field(
        None, description="CSV/JSONL/JSON of lengths or a histogram (relative to the study file)."
    )

    @model_validator(mode="after")
    def _shape(self) -> EmpiricalLengths:
        if self.bins is not None and self.values is not None:
            raise ValueError("give bins (a histogram) or values (lengths), not both")
        if self.bins is None and self.values is None:
            if self.path is not None:
                raise ValueError(
                    f"path {self.path!r} is read when a study file is loaded (llem run, "
                    "llem config); here give bins/counts or values instead"
                )
            raise ValueError("needs bins + counts (a histogram), values, or path")
        if self.counts is not None and any(c < 0 for c in self.counts):
            raise ValueError("counts must be >= 0")
        if self.bins is not None:
            if self.counts is None or len(self.bins) != len(self.counts) + 1:
                raise ValueError(
                    "bins are histogram edges: give counts with len(bins) - 1 entries "
                    f"(got {len(self.bins)} bins, "
                    f"{'no' if self.counts is None else len(self.counts)} counts)"
                )
            if any(b >= a for a, b in zip(self.bins[1:], self.bins, strict=False)):
                raise ValueError("bins must be strictly increasing")
            if self.bins[0] < 0:
                raise ValueError("bins must be >= 0")
        if self.values is not None:
            if not self.values:
                raise ValueError("values is empty")
            if any(v < 1 for v in self.values):
                raise ValueError("values must be >= 1")
            if self.counts is not None and len(self.counts) != len(self.values):
                raise ValueError(
                    f"counts ({len(self.counts)}) must match values ({len(self.values)})"
                )
        if self.counts is not None and sum(self.counts) <= 0:
            raise ValueError("counts sum to 0")
        return self

    def weights(self) -> list[float]:
        """Probability of each bin (or value)."""
        n = len(self.bins) - 1 if self.bins is not None else len(self.values or [])
        counts = self.counts if self.counts is not None else [1] * n
        total = float(sum(counts))
        return [c / total for c in counts]


Distribution = (
    UniformLengths
    | NormalLengths
    | LognormalLengths
    | ParetoLengths
    | ExponentialLengths
    | EmpiricalLengths
)
DIST_NAMES = ("uniform", "normal", "lognormal", "pareto", "exponential", "empirical")


def _length_tag(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "fixed"
    if isinstance(value, dict):
        dist = value.get("dist")
        return dist if isinstance(dist, str) and dist in DIST_NAMES else None
    return getattr(value, "dist", None)


#: An input or output length: a fixed integer or a distribution chosen by ``dist``.
LengthSpec = Annotated[
    Annotated[int, Field(ge=1), Tag("fixed")]
    | Annotated[UniformLengths, Tag("uniform")]
    | Annotated[NormalLengths, Tag("normal")]
    | Annotated[LognormalLengths, Tag("lognormal")]
    | Annotated[ParetoLengths, Tag("pareto")]
    | Annotated[ExponentialLengths, Tag("exponential")]
    | Annotated[EmpiricalLengths, Tag("empirical")],
    Discriminator(
        _length_tag,
        custom_error_type="length_spec",
        custom_error_message=(
            "expected a positive integer or a distribution with dist: one of "
            + ", ".join(DIST_NAMES)
        ),
    ),
]


def expected_length(spec: int | Distribution, cap: int) -> int:
    """About the mean length a spec gives under ``cap`` (before clipping, for planning)."""
    if isinstance(spec, int):
        return min(spec, cap)
    if isinstance(spec, UniformLengths):
        mean = (spec.min + spec.max) / 2.0
    elif isinstance(spec, EmpiricalLengths):
        w = spec.weights()
        if spec.bins is not None:
            mids = [(a + b) / 2.0 for a, b in zip(spec.bins, spec.bins[1:], strict=False)]
        else:
            mids = [float(v) for v in spec.values or []]
        mean = sum(p * m for p, m in zip(w, mids, strict=True))
    else:
        mean = spec.mean
    high = min(cap, spec.max) if spec.max is not None else cap
    return max(1, min(high, max(spec.min, round(mean))))


def check_caps(spec: int | Distribution | None, cap: int, key: str, cap_key: str) -> None:
    """Raise ValueError when ``spec`` cannot fit under ``cap`` (``key`` names the field)."""
    if spec is None:
        return
    if isinstance(spec, int):
        if spec > cap:
            raise ValueError(
                f"{key} ({spec}) exceeds {cap_key} ({cap}); raise {cap_key} or shorten {key}"
            )
        return
    if spec.min > cap:
        raise ValueError(
            f"{key}.min ({spec.min}) exceeds {cap_key} ({cap}): every draw would be clipped "
            f"to {cap_key}; raise {cap_key} or lower {key}.min"
        )


# --------------------------------------------------------------------------- profiles


class LengthClaim(_Model):
    """Published statistics of a length distribution that a profile reproduces."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    max: float | None = None
    note: str | None = None


class WorkloadProvenance(_Model):
    """Where a workload profile comes from and what it reproduces (copied into results)."""

    name: str
    description: str
    source: str = Field(description="Where the numbers come from (repository, file, paper).")
    date: str = Field(description="When the source was read (ISO date).")
    assumptions: list[str] = Field(default_factory=list)
    reproduces: dict[Literal["input_len", "output_len"], LengthClaim] = Field(default_factory=dict)

    @field_validator("date", mode="before")
    @classmethod
    def _iso_date(cls, value: Any) -> Any:
        # YAML reads an unquoted 2026-12-07 as a date.
        return value.isoformat() if hasattr(value, "isoformat") else value


class WorkloadProfile(WorkloadProvenance):
    """A named pair of length distributions with its provenance (one file each)."""

    input_len: LengthSpec | None = None
    output_len: LengthSpec | None = None
    suggested: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings the source used (decoder, engine), for the user to copy.",
    )

    def provenance(self) -> WorkloadProvenance:
        """The profile without its distributions."""
        return WorkloadProvenance.model_validate(
            self.model_dump(include=set(WorkloadProvenance.model_fields))
        )


@cache
def builtin_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped with the package, sorted."""
    root = resources.files("llenergymeasure_contract") / "workloads"
    names = (p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))
    return tuple(sorted(names))


@cache
def builtin_profile(name: str) -> WorkloadProfile:
    """The built-in profile ``name``.

    Raises:
        KeyError: no built-in profile has that name.
    """
    if name not in builtin_profiles():
        raise KeyError(name)
    root = resources.files("llenergymeasure_contract") / "workloads"
    data = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
    return WorkloadProfile.model_validate(data)


def apply_profile(dataset: dict[str, Any], profile: WorkloadProfile) -> dict[str, Any]:
    """``dataset`` with the profile's lengths where it gives none, and its provenance."""
    out = dict(dataset)
    for key in ("input_len", "output_len"):
        spec = getattr(profile, key)
        if out.get(key) is None and spec is not None:
            out[key] = spec if isinstance(spec, int) else spec.model_dump(exclude_none=True)
    out["provenance"] = profile.provenance().model_dump()
    return out


def prepare_experiment_data(data: dict[str, Any]) -> dict[str, Any]:
    """An experiment mapping with a built-in profile applied and the length caps defaulted.

    Called by ``ExperimentConfig`` before validation: ``dataset.profile`` naming a built-in
    profile fills the lengths the dataset does not give; ``max_input_tokens`` /
    ``max_output_tokens`` not given default to the ``max`` of a distribution that has one.
    """
    dataset = data.get("dataset")
    if not isinstance(dataset, dict) or dataset.get("source", "synthetic") != "synthetic":
        return data
    name = dataset.get("profile")
    if isinstance(name, str) and dataset.get("provenance") is None and name in builtin_profiles():
        dataset = apply_profile(dataset, builtin_profile(name))
        data = {**data, "dataset": dataset}
    for key, cap in (("input_len", "max_input_tokens"), ("output_len", "max_output_tokens")):
        spec = dataset.get(key)
        high = spec.get("max") if isinstance(spec, dict) else getattr(spec, "max", None)
        if cap not in data and isinstance(high, int) and not isinstance(high, bool) and high > 0:
            data = {**data, cap: high}
    return data


# --------------------------------------------------------------------------- results


class Stats(BaseModel):
    """Summary of a distribution: latencies in seconds (``ExperimentResult``), lengths in
    tokens (:data:`LengthStats`); one definition for both."""

    model_config = ConfigDict(extra="forbid")

    count: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    min: float | None = None
    max: float | None = None


#: Realised request lengths (tokens).
LengthStats = Stats


class LengthHistogram(_Model):
    """Counts of lengths between ``edges`` (``len(edges) = len(counts) + 1``)."""

    edges: list[float]
    counts: list[int]


class WorkloadOutcome(_Model):
    """What the measured run asked for and got: the lengths, and the profile behind them."""

    profile: str | None = None
    provenance: WorkloadProvenance | None = None
    input_len: str = Field(description="The input length spec, in words.")
    output_len: str = Field(description="The output length spec, in words.")
    input_tokens: LengthStats  # prompt tokens as sent
    output_tokens_requested: LengthStats  # each request's max_new_tokens
    output_tokens_generated: LengthStats  # what each request produced
    input_histogram: LengthHistogram | None = None
    output_requested_histogram: LengthHistogram | None = None
    output_generated_histogram: LengthHistogram | None = None
    # Static batching (PyTorch): every row of a batch occupies a slot until the batch's longest
    # request ends. generated = rows x decode steps; waste = 1 - output tokens / generated.
    static_batch_tokens_generated: int | None = None
    static_batch_tokens_requested: int | None = None
    static_batch_waste_fraction: float | None = None


def describe(spec: int | Distribution | None, default: int) -> str:
    """A length spec in a few words (``400``, ``exponential mean 300 [1, 4096]``)."""
    if spec is None:
        return str(default)
    if isinstance(spec, int):
        return str(spec)
    if isinstance(spec, UniformLengths):
        head = "uniform"
    elif isinstance(spec, NormalLengths | LognormalLengths):
        head = f"{spec.dist} mean {spec.mean:g} sd {spec.stddev:g}"
    elif isinstance(spec, ParetoLengths):
        head = f"pareto mean {spec.mean:g} shape {spec.shape:g}"
    elif isinstance(spec, ExponentialLengths):
        head = f"exponential mean {spec.mean:g}"
    else:
        n = len(spec.counts or spec.values or [])
        head = f"empirical ({n} {'bins' if spec.bins is not None else 'values'})"
    high = spec.max if spec.max is not None else default
    return f"{head} [{spec.min}, {min(high, default)}]"


__all__ = [
    "DIST_NAMES",
    "Distribution",
    "EmpiricalLengths",
    "ExponentialLengths",
    "LengthClaim",
    "LengthHistogram",
    "LengthSpec",
    "LengthStats",
    "LognormalLengths",
    "NormalLengths",
    "ParetoLengths",
    "UniformLengths",
    "WorkloadOutcome",
    "WorkloadProfile",
    "WorkloadProvenance",
    "apply_profile",
    "builtin_profile",
    "builtin_profiles",
    "check_caps",
    "describe",
    "expected_length",
    "prepare_experiment_data",
]
