"""Load-time checks of the ``quality:`` section that need files or the host's Python.

The section's own rules (no dummy weights, hub tasks a backend cannot score) are validators of
:class:`~llenergymeasure_contract.evaluation.QualityConfig`; here the study loader reads each
task YAML file (its ``output_type`` and its ``data_files``) and, for the local runner, checks
that ``lm_eval`` is importable (``importlib.util.find_spec``: nothing is imported).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from llenergymeasure.config.inputs import check_regular_file
from llenergymeasure.errors import ConfigError
from llenergymeasure_contract.evaluation import LM_EVAL_INSTALL, loglikelihood_refusal
from llenergymeasure_contract.experiment import ExperimentConfig

#: Largest task YAML read (lm-eval's own are a few kB).
MAX_TASK_FILE_BYTES = 1024 * 1024


def read_task_yaml(path: Path) -> dict[str, Any] | None:
    """The mapping of a task YAML (``!function`` values read as None); None when unreadable."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        st = check_regular_file(path, "task file")  # a FIFO never blocks the read
        if st.st_size > MAX_TASK_FILE_BYTES:
            return None
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
    except (ConfigError, OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _data_files(data: dict[str, Any]) -> list[str]:
    files = (data.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, str):
        return [files]
    if isinstance(files, list):
        return [f for f in files if isinstance(f, str)]
    if isinstance(files, dict):
        out: list[str] = []
        for v in files.values():
            out += [v] if isinstance(v, str) else [f for f in v if isinstance(f, str)]
        return out
    return []


def quality_problems(exp: ExperimentConfig, where: str) -> list[str]:
    """Problems of ``exp``'s task YAML files: unreadable, data files missing or outside the
    task's folder (only that folder reaches a container), log-likelihood tasks the backend
    cannot score."""
    assert exp.quality is not None
    problems: list[str] = []
    for task in exp.quality.task_files():
        path = Path(task)
        data = read_task_yaml(path)
        if data is None or not isinstance(data.get("task"), str):
            problems.append(f"{where}: {task} is not an lm-eval task YAML (no task: NAME)")
            continue
        for f in _data_files(data):
            if "://" in f:
                continue
            target = (path.parent / f).resolve()
            if not target.exists():
                problems.append(
                    f"{where}: {task}: dataset_kwargs.data_files {f!r} does not exist "
                    f"(looked for {target}; relative to the task file)"
                )
            elif not target.is_relative_to(path.parent.resolve()):
                problems.append(
                    f"{where}: {task}: dataset_kwargs.data_files {f!r} is outside the task "
                    "file's folder, which is all that is mounted into the container; move it "
                    "beside the task file"
                )
        output_type = data.get("output_type")
        refusal = loglikelihood_refusal(
            str(data["task"]), output_type if isinstance(output_type, str) else None, exp
        )
        if refusal:
            problems.append(f"{where}: {refusal}")
    return problems


def lm_eval_problems(
    experiments: Iterable[ExperimentConfig],
    runner: str,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
) -> list[str]:
    """The missing-lm_eval problem for a local-runner study with a quality section.

    Every backend's Docker image carries lm_eval (the harness's ``lm-eval`` extra), so the
    message names the image of each backend with a quality section; the ``auto`` runner is
    checked by the harness when the pass starts.
    """
    from llenergymeasure.runners.kinds import runs_in_this_python  # lazy: runners import config

    if not runs_in_this_python(runner) or not any(e.quality is not None for e in experiments):
        return []
    try:
        present = find_spec("lm_eval") is not None
    except (ImportError, ValueError):
        present = False
    if present:
        return []
    from llenergymeasure_contract.registry import REGISTRY

    images = sorted({REGISTRY.get(e.backend).image for e in experiments if e.quality is not None})
    return [
        "quality: needs lm-evaluation-harness (lm_eval) in this Python for the local runner, "
        f"and it is not installed; run: {LM_EVAL_INSTALL}, or use runner: docker (the "
        f"{'/'.join(images)} image{'s carry' if len(images) > 1 else ' carries'} it), "
        "or remove quality:"
    ]
