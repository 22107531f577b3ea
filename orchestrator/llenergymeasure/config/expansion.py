"""Expand a parsed study mapping (sweep, experiments, shared fields) into a StudyConfig.

:func:`expand_study` is a short driver over named steps that share one :class:`_Expansion`.
"""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llenergymeasure.config.datasets import dataset_problems
from llenergymeasure.config.host_paths import resolve_paths
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
    check_key_path,
    deep_merge,
    dotted_outside_sweep,
    flatten_keys,
    flatten_leaves,
    set_dotted,
)
from llenergymeasure.config.problems import Candidate, format_section_validation, format_validation
from llenergymeasure.config.quality import lm_eval_problems, quality_problems
from llenergymeasure.config.result_keys import impact_inputs, notify_config
from llenergymeasure.config.shared_sections import SharedSections
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
    ExperimentConfig,
    HubDataset,
    JsonlDataset,
)
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.strict import MAX_TEXT_LEN, control_chars


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


@dataclass
class _Expansion:
    """One study mapping on its way to experiments: the parts read so far and the problems."""

    raw: dict[str, Any]
    source: str
    base_dir: Path
    user: UserDefaults
    overrides: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    entries: list[dict[str, Any]] = field(default_factory=list)
    default_backend: Any = None
    candidates: list[Candidate] = field(default_factory=list)
    shared_prov: dict[Any, dict[str, str]] = field(default_factory=dict)  # per backend

    def new_candidate(self, label: str, backend: Any) -> Candidate:
        """A candidate holding the shared fields (other backends' sections left out)."""
        base = {
            k: (copy.deepcopy(v) if isinstance(v, dict | list) else v)
            for k, v in self.shared.items()
            if not (k in REGISTRY and k != backend)
        }
        key = backend if isinstance(backend, str) else repr(backend)
        if key not in self.shared_prov:  # computed once per backend, copied
            self.shared_prov[key] = {k: k for k in flatten_keys(base)}
        return Candidate(data=base, label=label, provenance=dict(self.shared_prov[key]))

    def backend_of(self, cand: Candidate) -> str:
        """The backend ``cand`` runs, a ``--backend`` override first."""
        return str(self.overrides.get("backend", cand.data.get("backend", DEFAULT_BACKEND)))


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
    raw = dict(data)
    raw.pop("base", None)  # already merged by the file reader
    x = _Expansion(
        raw=raw,
        source=source,
        base_dir=base_dir,
        user=user or UserDefaults(),
        overrides=dict(overrides or {}),
    )
    _read_shared(x)
    _read_sweep(x)
    _read_entries(x)
    _build_candidates(x)
    _check_backends_used(x)
    _apply_overrides(x)
    experiments, sources, params, duplicates = _validate_experiments(x)
    execution = _execution(x, execution_overrides)
    runner = _runner(x, runner_overrides)
    name = _study_name(x)
    results = _results_dir(x, results_dir)
    impact = impact_inputs(raw, x.user, source, x.problems)
    notify = notify_config(raw, x.problems)
    x.problems.extend(lm_eval_problems(experiments, runner.runner))

    problems = x.problems
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


def _read_shared(x: _Expansion) -> None:
    """The shared experiment fields (everything but study keys) and the override keys."""
    shared = {k: v for k, v in x.raw.items() if k not in STUDY_KEYS}
    if x.user.energy_sampler and not (
        isinstance(shared.get("energy"), dict) and "sampler" in shared["energy"]
    ):
        shared = deep_merge({"energy": {"sampler": x.user.energy_sampler}}, shared)
    x.shared = shared

    for key in shared:
        if not isinstance(key, str):
            x.problems.append(
                f"{echo(key)}: keys must be strings; quote it (YAML reads unquoted "
                "on/off/yes/no/null and numbers as non-strings)"
            )
            continue
        msg = check_key_path(key) or dotted_outside_sweep(key)
        if msg:
            x.problems.append(f"{key}: {msg}")
    for key in x.overrides:
        msg = check_key_path(key)
        if msg:
            x.problems.append(f"{COMMAND_LINE} {key}: {msg}")


def _read_sweep(x: _Expansion) -> None:
    """``sweep:``: each axis checked; the good ones go to ``x.sweep``."""
    problems = x.problems
    sweep_raw = x.raw.get("sweep")
    sweep = x.sweep
    if "sweep" in x.raw and sweep_raw is None:
        problems.append("sweep: is empty; give key: [values] pairs, or remove the key")
    if sweep_raw is None:
        return
    if not isinstance(sweep_raw, dict) or not sweep_raw:
        problems.append("sweep: must be a non-empty mapping of key -> list of values")
        return
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
        if key in x.overrides:
            problems.append(
                f"{COMMAND_LINE} {key}: is a sweep axis in the study; drop the override or the axis"
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


def _read_entries(x: _Expansion) -> None:
    """``experiments:``: each entry checked; the mappings go to ``x.entries``."""
    problems = x.problems
    exp_raw = x.raw.get("experiments")
    if "experiments" in x.raw and exp_raw is None:
        problems.append("experiments: is empty; list experiment mappings, or remove the key")
    if exp_raw is None:
        return
    if not isinstance(exp_raw, list) or not exp_raw:
        problems.append("experiments: must be a non-empty list of experiment mappings")
        return
    for i, entry in enumerate(exp_raw):
        if not isinstance(entry, dict):
            problems.append(f"experiments[{i}]: must be a mapping, got {echo(entry)}")
            continue
        # an entry's own name: is the experiment's label (ExperimentConfig.name)
        bad = [k for k in entry if k in STUDY_KEYS and k != "name"]
        for k in bad:
            problems.append(f"experiments[{i}].{k}: study key {k!r} belongs at the top level")
        for k in entry:
            msg = (
                check_key_path(str(k)) or dotted_outside_sweep(str(k))
                if k not in STUDY_KEYS
                else None
            )
            if msg:
                problems.append(f"experiments[{i}].{k}: {msg}")
        x.entries.append(entry)


def _build_candidates(x: _Expansion) -> None:
    """The sweep's points, then the entries (or the shared fields alone): ``x.candidates``.

    Raises:
        ConfigError: the study expands to more experiments than ``max_experiments``.
    """
    sweep, entries, overrides = x.sweep, x.entries, x.overrides
    # a --backend override decides which shared backend section each experiment keeps
    default_backend = overrides.get("backend", x.shared.get("backend", DEFAULT_BACKEND))
    x.default_backend = default_backend
    limit = x.raw.get("max_experiments", DEFAULT_MAX_EXPERIMENTS)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        x.problems.append(f"max_experiments: must be a positive integer, got {echo(limit)}")
        limit = DEFAULT_MAX_EXPERIMENTS
    size = _expansion_size(sweep, entries, default_backend)
    if size > limit:
        raise ConfigError(
            f"the study expands to {size:,} experiments, more than the limit of {limit:,}",
            source=x.source,
            problems=[
                "sweep: "
                + " x ".join(f"{k} ({len(v)})" for k, v in sweep.items())
                + (f" + {len(entries)} experiments" if entries else "")
            ],
            hint="shrink the sweep, or raise the limit with max_experiments: N at the top of "
            "the study file (each experiment runs n_cycles times)",
        )
    if sweep:
        _sweep_points(x)
    for i, entry in enumerate(entries):
        backend = overrides.get("backend", entry.get("backend", default_backend))
        cand = x.new_candidate(f"experiments[{i}]", backend)
        cand.data = deep_merge(cand.data, entry)
        for k in flatten_keys(entry):
            cand.provenance[k] = f"experiments[{i}].{k}"
        cand.params.update(flatten_leaves(entry))
        x.candidates.append(cand)
    if not sweep and x.raw.get("experiments") is None:
        x.candidates.append(x.new_candidate(Path(x.source).name, default_backend))


def _sweep_points(x: _Expansion) -> None:
    """One candidate per point of the grid; a scoped axis multiplies its backend's only."""
    sweep = x.sweep
    unscoped = [(k, v) for k, v in sweep.items() if k.split(".")[0] not in REGISTRY]
    scoped: dict[str, list[tuple[str, list[Any]]]] = {}
    for k, v in sweep.items():
        head = k.split(".")[0]
        if head in REGISTRY:
            scoped.setdefault(head, []).append((k, v))
    n = 0
    axes = [[(k, val, f"sweep.{k}[{i}]") for i, val in enumerate(vals)] for k, vals in unscoped]
    for combo in itertools.product(*axes):
        backend = next((val for k, val, _ in combo if k == "backend"), x.default_backend)
        scoped_axes = [
            [(k, val, f"sweep.{k}[{i}]") for i, val in enumerate(vals)]
            for k, vals in scoped.get(str(backend), [])
        ]
        for scombo in itertools.product(*scoped_axes):
            assignments = [*combo, *scombo]
            n += 1
            cand = x.new_candidate(_label_point(assignments, n), backend)
            for k, val, src in assignments:
                set_dotted(cand.data, k, val)
                cand.provenance[k] = src
                cand.params[k] = val
            x.candidates.append(cand)


def _check_backends_used(x: _Expansion) -> None:
    """Scoped keys and shared backend sections must be used by some experiment."""
    used_backends = {x.backend_of(c) for c in x.candidates}
    for key in x.sweep:
        head = key.split(".")[0]
        if head in REGISTRY and head not in used_backends:
            x.problems.append(
                f"sweep.{key}: no experiment uses backend {head!r} "
                f"(backends in this study: {', '.join(sorted(used_backends))}); "
                f"add {head} to the backend sweep or remove this key"
            )
    for key in x.overrides:
        head = key.split(".")[0]
        if head in REGISTRY and head not in used_backends:
            x.problems.append(
                f"{COMMAND_LINE} {key}: no experiment uses backend {head!r} "
                f"(backends in this study: {', '.join(sorted(used_backends))})"
            )
    for b in REGISTRY.names():
        if b in x.shared and b not in used_backends:
            x.problems.append(
                f"{b}: section does not match any experiment's backend "
                f"({', '.join(sorted(used_backends))}); remove it or set backend: {b}"
            )


def _apply_overrides(x: _Expansion) -> None:
    """Command-line overrides win over everything in the file; then host paths resolve."""
    memo: dict[tuple[str, bool], str] = {}
    for cand in x.candidates:
        own_backend = x.backend_of(cand)
        for k, v in x.overrides.items():
            head = k.split(".")[0]
            if head in REGISTRY and head != own_backend:
                continue  # scoped, like a scoped sweep key: only that backend's experiments
            set_dotted(cand.data, k, v)
            cand.provenance[k] = f"{COMMAND_LINE} {k}"
        resolve_paths(cand, x.base_dir, x.problems, memo)


def _validate_experiments(
    x: _Expansion,
) -> tuple[list[ExperimentConfig], list[str], list[dict[str, Any]], list[DuplicateExperiment]]:
    """Each candidate validated (none while problems stand); duplicates set aside."""
    problems = x.problems
    experiments: list[ExperimentConfig] = []
    sources: list[str] = []
    params: list[dict[str, Any]] = []
    duplicates: list[DuplicateExperiment] = []
    seen: dict[str, str] = {}
    if problems:
        return experiments, sources, params, duplicates
    sections = SharedSections()
    dataset_checks: dict[str, str | None] = {}
    for cand in x.candidates:
        try:
            exp = ExperimentConfig.model_validate(sections.intern(cand.data))
        except ValidationError as exc:
            for p in format_validation(exc, cand):
                if p not in problems:
                    problems.append(p)
            continue
        if exp.load_format == "dummy":
            try:
                resolve_architecture(exp.model, base_dir=x.base_dir)
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
    return experiments, sources, params, duplicates


def _execution(x: _Expansion, execution_overrides: Mapping[str, Any] | None) -> ExecutionConfig:
    """``execution:`` over the user's gaps, under the command line's."""
    execution_data = x.raw.get("execution") or {}
    if not isinstance(execution_data, dict):
        x.problems.append("execution: must be a mapping")
        execution_data = {}
    execution_data = dict(execution_data)
    if x.user.config_gap_s is not None:
        execution_data.setdefault("config_gap_s", x.user.config_gap_s)
    if x.user.cycle_gap_s is not None:
        execution_data.setdefault("cycle_gap_s", x.user.cycle_gap_s)
    execution_data.update(execution_overrides or {})
    execution = ExecutionConfig()
    try:
        execution = ExecutionConfig.model_validate(execution_data)
    except ValidationError as exc:
        x.problems.extend(format_section_validation(exc, "execution"))
    return execution


def _runner(x: _Expansion, runner_overrides: Mapping[str, Any] | None) -> RunnerSettings:
    """The runner keys: user defaults, then the study file, then the command line."""
    raw, user, problems = x.raw, x.user, x.problems
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
        problems.extend(format_section_validation(exc, ""))
    chosen = runner_data.get("runner", runner.runner)
    from llenergymeasure.runners.kinds import section_problems  # lazy: runners import config

    problems.extend(section_problems(chosen, set(raw)))
    for key in runner.images:
        if key not in REGISTRY:
            problems.append(
                f"images.{key}: unknown backend; expected one of {', '.join(REGISTRY.names())}"
            )
    return runner


def _study_name(x: _Expansion) -> str:
    """``name:``, else the study file's stem (``llem`` for a command-line study)."""
    name = x.raw.get("name", Path(x.source).stem if x.source != COMMAND_LINE else "llem")
    if not isinstance(name, str) or not name.strip():
        x.problems.append(f"name: must be a non-empty string, got {echo(name)}")
        return "study"
    if control_chars(name) or len(name) > 200:
        x.problems.append(
            f"name: must be one line of printable text of at most 200 characters, got {echo(name)}"
        )
        return "study"
    return name


def _results_dir(x: _Expansion, results_dir: str | None) -> str:
    """The results folder, absolute: the command line, the study file, the user, the default."""
    results = results_dir or x.raw.get("results_dir") or x.user.results_dir or "./results"
    if not isinstance(results, str) or not results.strip():
        x.problems.append(f"results_dir: must be a path string, got {echo(results)}")
        results = "./results"
    elif control_chars(results) or len(results) > MAX_TEXT_LEN:
        x.problems.append(
            f"results_dir: must be one line of printable text (a path), got {echo(results)}"
        )
        results = "./results"
    # Made absolute once, here (relative to the working directory, as typed): bind mounts,
    # the manifest and a resume from another directory all need the absolute path.
    return os.path.abspath(expand_path(results, "results_dir", x.problems))
