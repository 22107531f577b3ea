"""How a study is executed (not what it measures): :class:`StudyRunOptions` and what the
runners get from the options and the study's ``runner`` section (container settings, paths,
resume overrides). No I/O beyond reading this process's environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.errors import ConfigError, UsageError
from llenergymeasure.runners.preflight import DEFAULT_MIN_FREE_BYTES
from llenergymeasure.runners.spec import ContainerSettings
from llenergymeasure.study.plan import PlannedExperiment, StudyPlan
from llenergymeasure_contract.architecture import is_local_path

#: Set to 1 on CPU-only hosts (CI): containers get no GPU request at all, said out loud.
ENV_NO_GPU = "LLEM_NO_GPU"
#: Where compiled kernels are kept between experiments unless the study says otherwise.
DEFAULT_COMPILE_CACHE_DIR = "~/.cache/llenergymeasure/compile"


@dataclass
class StudyRunOptions:
    """How to execute (not what to measure); the CLI fills it from flags.

    Attributes:
        quiet: Print only the final summary (``-q``).
        verbose: Stream harness/container logs to the console (``-v``).
        export_csv: Also write ``summary.csv``.
        assume_yes: Answer yes to questions (pulling a missing image).
        interactive: May ask questions; ``None``: when stdin is a terminal.
        runner: ``docker`` | ``local`` | ``auto``; ``None``: the study's ``runner.runner``.
        request_gpus: ``False`` runs containers without any GPU (CPU-only hosts);
            ``None``: ``True`` unless ``LLEM_NO_GPU=1``.
        preflight: Run the preflight checks (tests with fakes may turn them off).
        min_free_bytes: Preflight's free-disk threshold under the results dir.
        local_command: Local runner command override (tests).
        container_command: Container command override (tests; default: the harness).
    """

    quiet: bool = False
    verbose: bool = False
    export_csv: bool = True
    assume_yes: bool = False
    interactive: bool | None = None
    runner: str | None = None
    request_gpus: bool | None = None
    preflight: bool = True
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    local_command: tuple[str, ...] | None = None
    container_command: tuple[str, ...] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


def merge_options(options: StudyRunOptions | None, flags: dict[str, Any]) -> StudyRunOptions:
    """``options`` (or the defaults) with the non-``None`` keyword ``flags`` set on it."""
    opts = StudyRunOptions() if options is None else options
    for key, value in flags.items():
        if not hasattr(opts, key):
            raise TypeError(f"unknown study option {key!r}")
        if value is not None:
            setattr(opts, key, value)
    return opts


def absolute(path: str | Path) -> Path:
    """``path`` with ``~`` expanded, made absolute against the working directory (no resolve:
    a symlinked results folder keeps the name the user gave it)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def request_gpus(opts: StudyRunOptions) -> bool:
    """Whether containers request GPUs (``LLEM_NO_GPU=1`` turns it off on CPU-only hosts)."""
    if opts.request_gpus is not None:
        return opts.request_gpus
    return os.environ.get(ENV_NO_GPU, "") in ("", "0", "false", "no")


def compile_cache_root(plan: StudyPlan) -> str | None:
    """The host compile-cache root (None when the study turned it off with '')."""
    configured = plan.study.runner.docker.compile_cache_dir
    if configured == "":
        return None
    return str(absolute(configured or DEFAULT_COMPILE_CACHE_DIR))


def passthrough_env(plan: StudyPlan) -> dict[str, str]:
    """``docker.env_passthrough``: the named variables' values from this process's environment.

    The values exist only in memory and in the container's environment: never in the plan,
    the manifest, a log or the console (only the names are).
    """
    names = plan.study.runner.docker.env_passthrough
    return {name: os.environ[name] for name in names if name in os.environ}


def container_settings(plan: StudyPlan, opts: StudyRunOptions) -> ContainerSettings:
    """The container settings of the study's runs (Docker runner and Slurm launchers)."""
    d = plan.study.runner.docker
    ulimits: dict[str, int | tuple[int, int]] | None = None
    if d.ulimits is not None:
        ulimits = {
            name: (int(value[0]), int(value[1])) if isinstance(value, list) else int(value)
            for name, value in d.ulimits.items()
        }
    hf = d.hf_cache_dir or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    engines = d.engine_cache_dir or "~/.cache/llenergymeasure/trt-engines"
    env = dict(d.env)
    env.update(passthrough_env(plan))
    env.update(opts.extra_env)
    return ContainerSettings(
        network_mode=d.network_mode,
        shm_size=d.shm_size,
        ipc_mode=d.ipc_mode,
        ulimits=ulimits,
        mem_limit=d.mem_limit,
        hf_cache_dir=str(absolute(hf)),
        engine_cache_dir=str(absolute(engines)),
        compile_cache_dir=compile_cache_root(plan),
        run_as_host_user=d.run_as_host_user,
        extra_env=env,
        command=opts.container_command,
        request_gpus=request_gpus(opts),
    )


def base_dir(plan: StudyPlan) -> Path:
    """The folder relative input paths of the study are taken from (its file's folder)."""
    src = plan.study.source
    if src and not src.startswith("<") and Path(src).exists():
        return Path(src).resolve().parent
    return Path.cwd()


def input_paths(exps: list[PlannedExperiment], base: Path) -> tuple[str, ...]:
    """The host paths the experiments read (model, tokenizer, dataset file, LoRA adapter
    directories), sorted."""
    out: set[str] = set()
    for exp in exps:
        cfg = exp.config
        out.update(v for v in (cfg.model, cfg.tokenizer) if isinstance(v, str) and is_local_path(v))
        path = getattr(cfg.dataset, "path", None)
        if isinstance(path, str):
            out.add(str(base / Path(path).expanduser()))
        if cfg.lora is not None:  # LoRA adapter directories (absolute since load)
            out.update(r.source for r in cfg.lora.refs() if r.kind == "path" and r.source)
    return tuple(sorted(out))


#: Execution overrides that would change which runs exist or their order (fixed in plan.json).
FIXED_ON_RESUME = {
    "n_cycles": "--cycles",
    "cycle_order": "--order",
    "shuffle_seed": "execution.shuffle_seed",
}


def refuse_fixed(execution: dict[str, Any]) -> None:
    """Refuse resume overrides that would change a started study's runs or their order.

    Raises:
        UsageError: ``--cycles``, ``--order`` or ``execution.shuffle_seed`` was given.
    """
    fixed = [flag for key, flag in FIXED_ON_RESUME.items() if key in execution]
    if fixed:
        raise UsageError(
            f"{' and '.join(fixed)} cannot change a started study: its runs and their order "
            "are fixed in its plan.json",
            hint="resume without them, or start a new study with them",
        )


def apply_overrides(
    plan: StudyPlan, execution: dict[str, Any], runner: dict[str, Any]
) -> StudyPlan:
    """The saved plan with resume overrides applied, validated exactly as for a new study.

    Raises:
        ConfigError: an override is invalid (``--runner dockr``, a negative ``--timeout``).
    """
    if not execution and not runner:
        return plan
    from pydantic import ValidationError

    from llenergymeasure.config.keys import COMMAND_LINE
    from llenergymeasure.config.problems import format_section_validation
    from llenergymeasure.config.study import ExecutionConfig, RunnerSettings

    problems: list[str] = []
    ex = plan.study.execution
    rs = plan.study.runner
    try:
        ex = ExecutionConfig.model_validate({**ex.model_dump(), **execution})
    except ValidationError as exc:
        problems.extend(format_section_validation(exc, "execution"))
    try:
        rs = RunnerSettings.model_validate({**rs.model_dump(), **runner})
    except ValidationError as exc:
        problems.extend(format_section_validation(exc, ""))
    if problems:
        raise ConfigError(
            f"invalid override{'s' if len(problems) != 1 else ''} for the resumed study",
            source=COMMAND_LINE,
            problems=problems,
        )
    study = plan.study.model_copy(update={"execution": ex, "runner": rs})
    return plan.model_copy(update={"study": study})
