"""Expand a parsed study mapping (sweep, experiments, shared fields) into a StudyConfig.

:func:`expand_study` is a short driver over named steps that share one :class:`_Expansion`.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llenergymeasure.config.datasets import dataset_problems
from llenergymeasure.config.host_paths import _resolve_paths
from llenergymeasure.config.impact import CarbonConfig, CostConfig, ImpactInputs
from llenergymeasure.config.inputs import (
    echo,
    expand_path,
    prefixes,
    shown,
)
from llenergymeasure.config.keys import (
    COMMAND_LINE,
    DEFAULT_MAX_EXPERIMENTS,
    RUNNER_KEYS,
    STUDY_KEYS,
    _dotted_outside_sweep,
    _flatten_keys,
    _flatten_leaves,
    _set_dotted,
    check_key_path,
    deep_merge,
)
from llenergymeasure.config.notify import NotifyConfig
from llenergymeasure.config.problems import _Candidate, _format_validation, _section_problems
from llenergymeasure.config.quality import lm_eval_problems, quality_problems
from llenergymeasure.config.study import (
    DuplicateExperiment,
    ExecutionConfig,
    RunnerSettings,
    StudyConfig,
)
from llenergymeasure.config.user import UserDefaults
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.architecture import resolve_architecture
from llenergymeasure_contract.experiment import (
    DEFAULT_BACKEND,
    BaselineConfig,
    DecoderConfig,
    EnergyConfig,
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
    WarmupConfig,
)
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.strict import MAX_TEXT_LEN, control_chars
from llenergymeasure_contract.traffic import TrafficConfig


def _frozen(value: Any) -> Any:
    """A hashable, order-insensitive key for plain YAML data (``TypeError`` otherwise)."""
    if isinstance(value, dict):
        return frozenset((k, _frozen(v)) for k, v in value.items())
    if isinstance(value, list):
        return ("list", tuple(_frozen(v) for v in value))
    hash(value)
    return (type(value), value)  # 1 and True and 1.0 stay apart


class _SharedSections:
    """One frozen section object per distinct section, shared by the experiments that set it.

    A 10,000-point sweep over ten batch sizes then holds ten ``PyTorchConfig`` objects, not
    10,000: the configs are immutable, so sharing is safe, and the cyclic garbage collector
    has far fewer live objects to rescan while the sweep grows (instead of pausing it).
    A section that does not validate on its own is left as data, so the experiment's own
    validation reports it with the usual key path.
    """

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {
            "decoder": DecoderConfig,
            "warmup": WarmupConfig,
            "baseline": BaselineConfig,
            "energy": EnergyConfig,
            "traffic": TrafficConfig,
            **{spec.name: spec.section for spec in REGISTRY},
        }
        self._seen: dict[tuple[str, Any], BaseModel] = {}

    def intern(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with each section dict replaced by the shared validated section."""
        out = data
        for key, model in self._models.items():
            value = data.get(key)
            if not isinstance(value, dict):
                continue
            try:
                memo = (key, _frozen(value))
                section = self._seen.get(memo)
            except TypeError:
                continue  # not plain data: let the experiment's validation judge it
            if section is None:
                try:
                    section = model.model_validate(value)
                except ValidationError:
                    continue
                self._seen[memo] = section
            if out is data:
                out = dict(data)
            out[key] = section
        return out


def _expansion_size(
    sweep: Mapping[str, list[Any]], entries: list[dict[str, Any]], default_backend: Any
) -> int:
    """How many experiments the sweep and entries expand to, from the list lengths alone."""
    size = len(entries)
    if not sweep:
        return size
    unscoped = 1
    for key, values in sweep.items():
        if key != "backend" and key.split(".")[0] not in REGISTRY:
            unscoped *= len(values)
    backends = sweep.get("backend", [default_backend])
    per_backend = 0
    for backend in backends:
        n = 1
        for key, values in sweep.items():
            if key.split(".")[0] in REGISTRY and key.split(".")[0] == backend:
                n *= len(values)
        per_backend += n
    return size + unscoped * per_backend


def _label_point(assignments: list[tuple[str, Any, str]], n: int) -> str:
    desc = ", ".join(f"{k}={shown(v)}" for k, v, _ in assignments)
    return f"sweep point {n} ({desc})" if desc else f"sweep point {n}"


def expand_study(
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path,
    user: UserDefaults | None = None,
    overrides: Mapping[str, Any] | None = None,
    execution_overrides: Mapping[str, Any] | None = None,
    runner_overrides: Mapping[str, Any] | None = None,
    results_dir: str | None = None,
) -> StudyConfig:
    """Expand a parsed study mapping into a validated :class:`StudyConfig`.

    Precedence, lowest first: built-in defaults, user defaults, the study file, ``overrides``
    (command line). ``overrides`` maps dotted experiment keys to values.

    Raises:
        ConfigError: with one line per problem, each naming the key path.
    """
    user = user or UserDefaults()
    overrides = dict(overrides or {})
    problems: list[str] = []
    raw = dict(data)
    raw.pop("base", None)  # already merged by the file reader

    shared = {k: v for k, v in raw.items() if k not in STUDY_KEYS}
    if user.energy_sampler and not (
        isinstance(shared.get("energy"), dict) and "sampler" in shared["energy"]
    ):
        shared = deep_merge({"energy": {"sampler": user.energy_sampler}}, shared)

    for key in shared:
        if not isinstance(key, str):
            problems.append(
                f"{echo(key)}: keys must be strings; quote it (YAML reads unquoted "
                "on/off/yes/no/null and numbers as non-strings)"
            )
            continue
        msg = check_key_path(key) or _dotted_outside_sweep(key)
        if msg:
            problems.append(f"{key}: {msg}")
    for key in overrides:
        msg = check_key_path(key)
        if msg:
            problems.append(f"{COMMAND_LINE} {key}: {msg}")

    # ---- sweep
    sweep_raw = raw.get("sweep")
    sweep: dict[str, list[Any]] = {}
    if "sweep" in raw and sweep_raw is None:
        problems.append("sweep: is empty; give key: [values] pairs, or remove the key")
    if sweep_raw is not None:
        if not isinstance(sweep_raw, dict) or not sweep_raw:
            problems.append("sweep: must be a non-empty mapping of key -> list of values")
        else:
            for key, values in sweep_raw.items():
                if not isinstance(key, str):
                    problems.append(f"sweep.{key}: keys must be strings")
                    continue
                msg = check_key_path(key)
                if msg:
                    problems.append(f"sweep.{key}: {msg}")
                    continue
                if key in STUDY_KEYS:
                    problems.append(f"sweep.{key}: study key {key!r} cannot be swept")
                    continue
                if not isinstance(values, list):
                    problems.append(
                        f"sweep.{key}: expected a list of values, got {echo(values)}; "
                        f"write [{echo(values)}] for a single value"
                    )
                    continue
                if not values:
                    problems.append(f"sweep.{key}: empty list; give at least one value")
                    continue
                if key in overrides:
                    problems.append(
                        f"{COMMAND_LINE} {key}: is a sweep axis in the study; drop the "
                        "override or the axis"
                    )
                    continue
                sweep[key] = values
            for key in sweep:
                parent = next((p for p in prefixes(key) if p in sweep), None)
                if parent is not None:
                    problems.append(
                        f"sweep.{key}: sweeps a part of sweep.{parent}, which sets the whole "
                        f"{parent} section; every point would carry two contradicting labels. "
                        f"Sweep either {parent} or its keys, not both"
                    )

    # ---- explicit experiments
    exp_raw = raw.get("experiments")
    entries: list[dict[str, Any]] = []
    if "experiments" in raw and exp_raw is None:
        problems.append("experiments: is empty; list experiment mappings, or remove the key")
    if exp_raw is not None:
        if not isinstance(exp_raw, list) or not exp_raw:
            problems.append("experiments: must be a non-empty list of experiment mappings")
        else:
            for i, entry in enumerate(exp_raw):
                if not isinstance(entry, dict):
                    problems.append(f"experiments[{i}]: must be a mapping, got {echo(entry)}")
                    continue
                # an entry's own name: is the experiment's label (ExperimentConfig.name)
                bad = [k for k in entry if k in STUDY_KEYS and k != "name"]
                for k in bad:
                    problems.append(
                        f"experiments[{i}].{k}: study key {k!r} belongs at the top level"
                    )
                for k in entry:
                    msg = (
                        check_key_path(str(k)) or _dotted_outside_sweep(str(k))
                        if k not in STUDY_KEYS
                        else None
                    )
                    if msg:
                        problems.append(f"experiments[{i}].{k}: {msg}")
                entries.append(entry)

    # a --backend override decides which shared backend section each experiment keeps
    default_backend = overrides.get("backend", shared.get("backend", DEFAULT_BACKEND))
    candidates: list[_Candidate] = []

    shared_prov: dict[Any, dict[str, str]] = {}  # per backend: computed once, copied

    def new_candidate(label: str, backend: Any) -> _Candidate:
        base = {
            k: (copy.deepcopy(v) if isinstance(v, dict | list) else v)
            for k, v in shared.items()
            if not (k in REGISTRY and k != backend)
        }
        key = backend if isinstance(backend, str) else repr(backend)
        if key not in shared_prov:
            shared_prov[key] = {k: k for k in _flatten_keys(base)}
        return _Candidate(data=base, label=label, provenance=dict(shared_prov[key]))

    limit = raw.get("max_experiments", DEFAULT_MAX_EXPERIMENTS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        problems.append(f"max_experiments: must be a positive integer, got {echo(limit)}")
        limit = DEFAULT_MAX_EXPERIMENTS
    size = _expansion_size(sweep, entries, default_backend)
    if size > limit:
        raise ConfigError(
            f"the study expands to {size:,} experiments, more than the limit of {limit:,}",
            source=source,
            problems=[
                "sweep: "
                + " x ".join(f"{k} ({len(v)})" for k, v in sweep.items())
                + (f" + {len(entries)} experiments" if entries else "")
            ],
            hint="shrink the sweep, or raise the limit with max_experiments: N at the top of "
            "the study file (each experiment runs n_cycles times)",
        )
    if sweep:
        unscoped = [(k, v) for k, v in sweep.items() if k.split(".")[0] not in REGISTRY]
        scoped: dict[str, list[tuple[str, list[Any]]]] = {}
        for k, v in sweep.items():
            head = k.split(".")[0]
            if head in REGISTRY:
                scoped.setdefault(head, []).append((k, v))
        n = 0
        axes = [[(k, val, f"sweep.{k}[{i}]") for i, val in enumerate(vals)] for k, vals in unscoped]
        for combo in itertools.product(*axes):
            backend = next((val for k, val, _ in combo if k == "backend"), default_backend)
            scoped_axes = [
                [(k, val, f"sweep.{k}[{i}]") for i, val in enumerate(vals)]
                for k, vals in scoped.get(str(backend), [])
            ]
            for scombo in itertools.product(*scoped_axes):
                assignments = [*combo, *scombo]
                n += 1
                cand = new_candidate(_label_point(assignments, n), backend)
                for k, val, src in assignments:
                    _set_dotted(cand.data, k, val)
                    cand.provenance[k] = src
                    cand.params[k] = val
                candidates.append(cand)
    for i, entry in enumerate(entries):
        backend = overrides.get("backend", entry.get("backend", default_backend))
        cand = new_candidate(f"experiments[{i}]", backend)
        cand.data = deep_merge(cand.data, entry)
        for k in _flatten_keys(entry):
            cand.provenance[k] = f"experiments[{i}].{k}"
        cand.params.update(_flatten_leaves(entry))
        candidates.append(cand)
    if not sweep and exp_raw is None:
        candidates.append(new_candidate(Path(source).name, default_backend))

    # scoped keys and shared sections must be used by some experiment
    def backend_of(cand: _Candidate) -> str:
        return str(overrides.get("backend", cand.data.get("backend", DEFAULT_BACKEND)))

    used_backends = {backend_of(c) for c in candidates}
    for key in sweep:
        head = key.split(".")[0]
        if head in REGISTRY and head not in used_backends:
            problems.append(
                f"sweep.{key}: no experiment uses backend {head!r} "
                f"(backends in this study: {', '.join(sorted(used_backends))}); "
                f"add {head} to the backend sweep or remove this key"
            )
    for key in overrides:
        head = key.split(".")[0]
        if head in REGISTRY and head not in used_backends:
            problems.append(
                f"{COMMAND_LINE} {key}: no experiment uses backend {head!r} "
                f"(backends in this study: {', '.join(sorted(used_backends))})"
            )
    for b in REGISTRY.names():
        if b in shared and b not in used_backends:
            problems.append(
                f"{b}: section does not match any experiment's backend "
                f"({', '.join(sorted(used_backends))}); remove it or set backend: {b}"
            )

    # command-line overrides win over everything in the file
    memo: dict[tuple[str, bool], str] = {}
    for cand in candidates:
        own_backend = backend_of(cand)
        for k, v in overrides.items():
            head = k.split(".")[0]
            if head in REGISTRY and head != own_backend:
                continue  # scoped, like a scoped sweep key: only that backend's experiments
            _set_dotted(cand.data, k, v)
            cand.provenance[k] = f"{COMMAND_LINE} {k}"
        _resolve_paths(cand, base_dir, problems, memo)

    # ---- validate experiments
    experiments: list[ExperimentConfig] = []
    sources: list[str] = []
    params: list[dict[str, Any]] = []
    duplicates: list[DuplicateExperiment] = []
    seen: dict[str, str] = {}
    if not problems:
        sections = _SharedSections()
        dataset_checks: dict[str, str | None] = {}
        for cand in candidates:
            try:
                exp = ExperimentConfig.model_validate(sections.intern(cand.data))
            except ValidationError as exc:
                for p in _format_validation(exc, cand):
                    if p not in problems:
                        problems.append(p)
                continue
            if exp.load_format == "dummy":
                try:
                    resolve_architecture(exp.model, base_dir=base_dir)
                except ConfigError as exc:
                    problems.append(f"{cand.source_of(('model',))}: {exc.message}")
                    continue
            if exp.quality is not None:
                problems.extend(quality_problems(exp, cand.source_of(("quality", "tasks"))))
            if isinstance(exp.dataset, JsonlDataset | HubDataset) and exp.dataset.text_field == "":
                problems.append(f"{cand.source_of(('dataset', 'text_field'))}: must not be empty")
            for p in dataset_problems(exp, cand.source_of(("dataset",)), dataset_checks):
                if p not in problems:
                    problems.append(p)
            h = exp.config_hash
            if h in seen:
                duplicates.append(
                    DuplicateExperiment(source=cand.label, same_as=seen[h], config_hash=h)
                )
                continue
            seen[h] = cand.label
            experiments.append(exp)
            sources.append(cand.label)
            params.append(cand.params)

    # ---- execution and runner settings
    execution_data = raw.get("execution") or {}
    if not isinstance(execution_data, dict):
        problems.append("execution: must be a mapping")
        execution_data = {}
    execution_data = dict(execution_data)
    if user.config_gap_s is not None:
        execution_data.setdefault("config_gap_s", user.config_gap_s)
    if user.cycle_gap_s is not None:
        execution_data.setdefault("cycle_gap_s", user.cycle_gap_s)
    execution_data.update(execution_overrides or {})
    execution = ExecutionConfig()
    try:
        execution = ExecutionConfig.model_validate(execution_data)
    except ValidationError as exc:
        problems.extend(_section_problems(exc, "execution"))

    runner_data: dict[str, Any] = {}
    for key, value in (
        ("runner", user.runner),
        ("images", user.images or None),
        ("cuda_major", user.cuda_major),
        ("pull_policy", user.pull_policy),
    ):
        if value is not None:
            runner_data[key] = value
    for key in RUNNER_KEYS:
        if key in raw:
            if key == "images" and isinstance(raw[key], dict):
                runner_data["images"] = {**runner_data.get("images", {}), **raw[key]}
            else:
                runner_data[key] = raw[key]
    runner_data.update(runner_overrides or {})
    runner = RunnerSettings()
    try:
        runner = RunnerSettings.model_validate(runner_data)
    except ValidationError as exc:
        problems.extend(_section_problems(exc, ""))
    chosen = runner_data.get("runner", runner.runner)
    if "slurm" in raw and isinstance(chosen, str) and chosen != "slurm":
        problems.append(
            f"slurm: the section applies to runner: slurm only, but the runner is "
            f"{chosen}; set runner: slurm (or --runner slurm), or remove the section"
        )
    for key in runner.images:
        if key not in REGISTRY:
            problems.append(
                f"images.{key}: unknown backend; expected one of {', '.join(REGISTRY.names())}"
            )

    name = raw.get("name", Path(source).stem if source != COMMAND_LINE else "llem")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"name: must be a non-empty string, got {echo(name)}")
        name = "study"
    elif control_chars(name) or len(name) > 200:
        problems.append(
            f"name: must be one line of printable text of at most 200 characters, got {echo(name)}"
        )
        name = "study"
    results = results_dir or raw.get("results_dir") or user.results_dir or "./results"
    if not isinstance(results, str) or not results.strip():
        problems.append(f"results_dir: must be a path string, got {echo(results)}")
        results = "./results"
    elif control_chars(results) or len(results) > MAX_TEXT_LEN:
        problems.append(
            f"results_dir: must be one line of printable text (a path), got {echo(results)}"
        )
        results = "./results"
    # Made absolute once, here (relative to the working directory, as typed): bind mounts,
    # the manifest and a resume from another directory all need the absolute path.
    results = os.path.abspath(expand_path(results, "results_dir", problems))

    impact = _impact_inputs(raw, user, source, problems)
    notify = _notify(raw, problems)
    problems.extend(lm_eval_problems(experiments, runner.runner))

    if problems:
        raise ConfigError(
            f"invalid study ({len(problems)} problem{'s' if len(problems) != 1 else ''})",
            source=source,
            problems=problems,
            hint="see docs/study-grammar.md, or `llem config schema` for the full schema",
        )
    # Every part was validated above; model_construct skips re-running the experiments'
    # validators (pydantic re-runs after-validators on instances), which matters at 10k.
    return StudyConfig.model_construct(
        name=name,
        source=source,
        experiments=experiments,
        experiment_sources=sources,
        experiment_params=params,
        execution=execution,
        runner=runner,
        results_dir=results,
        duplicates=duplicates,
        impact=impact,
        notify=notify,
    )


def _impact_inputs(
    raw: Mapping[str, Any], user: UserDefaults, source: str, problems: list[str]
) -> ImpactInputs:
    """``carbon:`` and ``cost:``: the study file over the user defaults, key by key."""
    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, model in (("carbon", CarbonConfig), ("cost", CostConfig)):
        merged: dict[str, Any] = {}
        defaults = getattr(user, key)
        if defaults is not None:
            for k, v in defaults.model_dump(exclude_none=True).items():
                merged[k] = v
                sources[f"{key}.{k}"] = f"user config {user.source or '(defaults)'}"
        given = raw.get(key)
        if given is not None and not isinstance(given, dict):
            problems.append(f"{key}: must be a mapping, got {echo(given)}")
            given = None
        for k, v in (given or {}).items():
            merged[k] = v
            if v is not None:
                sources[f"{key}.{k}"] = f"study file {source}"
            else:
                sources.pop(f"{key}.{k}", None)
        try:
            sections[key] = model.model_validate(merged)
        except ValidationError as exc:
            problems.extend(_section_problems(exc, key))
            sections[key] = model()
    return ImpactInputs(carbon=sections["carbon"], cost=sections["cost"], sources=sources)


#: The optional extra that brings the webhook HTTP client.
WEBHOOKS_EXTRA = "llenergymeasure[webhooks]"


def _notify(raw: Mapping[str, Any], problems: list[str]) -> NotifyConfig:
    given = raw.get("notify")
    if given is None:
        return NotifyConfig()
    if not isinstance(given, dict):
        problems.append(
            f"notify: must be a mapping (notify: {{webhooks: [URL, ...]}}), got {echo(given)}"
        )
        return NotifyConfig()
    try:
        cfg = NotifyConfig.model_validate(given)
    except ValidationError as exc:
        problems.extend(_section_problems(exc, "notify"))
        return NotifyConfig()
    if cfg.webhooks:
        import importlib.util

        if importlib.util.find_spec("httpx") is None:
            problems.append(
                "notify.webhooks: needs the HTTP client of the webhooks extra, which is not "
                f"installed; run: pip install '{WEBHOOKS_EXTRA}' (or remove notify:)"
            )
    return cfg
