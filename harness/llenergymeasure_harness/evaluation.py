"""The evaluation pass: lm-eval tasks on the engine just measured, in their own energy window.

::

    ... measure ─► prefill pass ─► load tasks ─► [begin "evaluation" ─ simple_evaluate ─ end]
                                   (datasets,     (GPU energy, time and tokens of the pass;
                                    not measured)  lm-eval's request building and scoring
                                                   are inside: they are part of the pass)

The engine is the one loaded for the performance window (no second model load); the
adapter is :class:`~llenergymeasure_harness.evaluation_lm.EngineLM`. Task YAML files are
loaded with their own folder as the working directory, so their relative ``data_files``
resolve there (in a container, the folder is mounted read-only at the host path or under
``/llem/inputs/tasks/``). The scores are lm-eval's, unchanged; the efficiency figures
(J per item, J per correct answer, ``quality_per_joule``) are defined in
``docs/methodology.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llenergymeasure_contract.errors import ConfigError
from llenergymeasure_contract.evaluation import (
    LM_EVAL_INSTALL,
    EvaluationResult,
    QualityConfig,
    TaskScore,
    loglikelihood_refusal,
)
from llenergymeasure_contract.experiment import ExperimentConfig

logger = logging.getLogger(__name__)

#: Metrics that count correct answers (their mean is the fraction of items right), in the
#: order the primary one is picked.
ACCURACY_METRICS = ("acc", "exact_match", "acc_norm")


class _TolerantLoader:
    """A YAML loader that reads lm-eval task files, ignoring their ``!function`` tags."""

    @staticmethod
    def load(text: str) -> Any:
        import yaml

        class Loader(yaml.SafeLoader):
            pass

        def ignore(loader: Any, suffix: str, node: Any) -> None:
            return None

        Loader.add_multi_constructor("!", ignore)
        return yaml.load(text, Loader=Loader)  # SafeLoader subclass


def read_task_file(path: str | Path) -> dict[str, Any]:
    """The mapping of one task YAML (``!function`` values read as None).

    Raises:
        ConfigError: not a YAML mapping with a ``task:`` name.
    """
    p = Path(path)
    try:
        data = _TolerantLoader.load(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read task file {p}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("task"), str):
        raise ConfigError(
            f"task file {p} names no task (a task YAML has task: NAME)",
            hint="see lm-eval's docs/new_task_guide.md",
        )
    return data


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def load_tasks(quality: QualityConfig, config: ExperimentConfig) -> tuple[list[Any], Any]:
    """Build lm-eval's task objects (datasets loaded) before the window opens.

    Returns:
        The top-level task and group objects, and the ``TaskManager``.

    Raises:
        ConfigError: lm_eval is not installed, or a task needs log-likelihoods the engine
            cannot give.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ConfigError(
            "quality: needs lm-evaluation-harness (lm_eval), which is not installed here",
            hint=f"run: {LM_EVAL_INSTALL} (the images built by llem carry it)",
        ) from exc
    files = [Path(f) for f in quality.task_files()]
    include = sorted({str(f.parent) for f in files})
    # Indexing lm-eval's thousands of built-in task files takes seconds: only when named.
    manager = TaskManager(include_path=include or None, include_defaults=bool(quality.task_names()))
    specs: list[tuple[str, Path | None]] = [(n, None) for n in quality.task_names()]
    specs += [(str(read_task_file(f)["task"]), f.parent) for f in files]
    objects: list[Any] = []
    for name, folder in specs:
        if folder is None:
            loaded = manager.load([name])
        else:
            with _working_dir(folder):
                loaded = manager.load([name])
        for task_name, task in loaded["tasks"].items():
            refusal = loglikelihood_refusal(task_name, str(task.get_config("output_type")), config)
            if refusal:
                raise ConfigError(refusal)
        children = {c for kids in loaded["group_map"].values() for c in kids}
        objects += [g for n, g in loaded["groups"].items() if n not in children]
        objects += [t for n, t in loaded["tasks"].items() if n not in children]
    return objects, manager


def check_ready(config: ExperimentConfig, backend: Any) -> None:
    """Fail before anything is measured when the evaluation pass could not run: lm_eval
    missing, a task file missing, or an engine without the evaluation methods.

    Raises:
        ConfigError: what is wrong, with the fix.
    """
    from llenergymeasure_harness.backends.base import Evaluable

    quality = config.quality
    if quality is None:
        return
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "quality: needs lm-evaluation-harness (lm_eval), which is not installed here",
            hint=f"run: {LM_EVAL_INSTALL} (the images built by llem carry it)",
        )
    for task in quality.task_files():
        if not Path(task).is_file():
            raise ConfigError(f"quality.tasks: task file {task} is not there")
    if not isinstance(backend, Evaluable):
        raise ConfigError(
            f"quality: backend {config.backend} cannot run evaluations yet "
            "(it implements no loglikelihood/generate_texts)",
            hint="use backend pytorch, vllm or tensorrt (or server mode / endpoint for "
            "generation tasks)",
        )


def load_eval_tokenizer(config: ExperimentConfig) -> Any:
    """The model's ``transformers`` tokenizer (``tokenizer:`` or the model)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        config.tokenizer or config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
    )


def run_evaluation(
    config: ExperimentConfig,
    backend: Any,
    *,
    meter: Any,
    sync: Callable[[], None] | None,
    clock: Callable[[], float],
    tokenizer: Any = None,
) -> EvaluationResult:
    """Evaluate ``config.quality`` on the loaded ``backend`` in an ``evaluation`` window.

    Args:
        config: The experiment (its ``quality`` section is set).
        backend: The loaded engine (an :class:`~.backends.base.Evaluable`).
        meter: The NVML energy meter, or None (no GPU: energy is None).
        sync: Waits for the device at the window edges.
        clock: The harness clock.
        tokenizer: The model's tokenizer (default: loaded from the config).

    Raises:
        ConfigError: see :func:`load_tasks`; the engine cannot evaluate.
    """
    import lm_eval

    from llenergymeasure_harness.evaluation_lm import EngineLM

    quality = config.quality
    assert quality is not None
    check_ready(config, backend)
    tasks, manager = load_tasks(quality, config)
    lm = EngineLM(
        backend,
        tokenizer if tokenizer is not None else load_eval_tokenizer(config),
        batch_size=quality.batch_size,
        max_length=quality.max_length,
    )
    settings: dict[str, object] = {
        "num_fewshot": quality.num_fewshot,
        "limit": quality.limit,
        "bootstrap_iters": quality.bootstrap_iters,
        "system_instruction": quality.system_instruction,
        "apply_chat_template": quality.apply_chat_template,
        "fewshot_as_multiturn": quality.fewshot_as_multiturn,
        "random_seed": quality.seed,
        "numpy_random_seed": quality.seed,
        "torch_random_seed": quality.seed,
        "fewshot_random_seed": quality.seed,
    }
    if meter is not None:
        meter.begin_window("evaluation", sync)
    t0 = clock()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        log_samples=True,
        **settings,
    )
    t1 = clock()
    energy_j: float | None = None
    if meter is not None:
        window = meter.end_window("evaluation", sync)
        t0, t1 = window.start_s, window.end_s
        energy_j = window.gpu_energy_j
    return assemble(
        out,
        energy_j=energy_j,
        duration_s=t1 - t0,
        input_tokens=lm.input_tokens,
        output_tokens=lm.output_tokens,
        settings={**settings, "batch_size": quality.batch_size, "max_length": quality.max_length},
    )


def _sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _primary(metrics: dict[str, float | None]) -> str | None:
    """The accuracy-type metric correct answers are counted by (``none`` filter first)."""
    for name in ACCURACY_METRICS:
        keys = [k for k in metrics if k.split(",")[0] == name and metrics[k] is not None]
        if keys:
            return f"{name},none" if f"{name},none" in keys else keys[0]
    return None


def task_score(task: str, out: dict[str, Any]) -> TaskScore:
    """One task's block from lm-eval's ``simple_evaluate`` output."""
    raw = out["results"].get(task, {})
    metrics: dict[str, float | None] = {}
    stderr: dict[str, float | None] = {}
    for key, value in raw.items():
        if key == "alias" or "," not in key:
            continue
        name, filt = key.split(",", 1)
        number = float(value) if isinstance(value, int | float) else None
        if name.endswith("_stderr"):
            stderr[f"{name[: -len('_stderr')]},{filt}"] = number
        else:
            metrics[key] = number
    counts = out.get("n-samples", {}).get(task, {})
    n_items = int(counts.get("effective", 0))
    primary = _primary(metrics)
    correct = None
    if primary is not None and metrics[primary] is not None:
        correct = round(float(metrics[primary] or 0.0) * n_items, 6)
    samples = out.get("samples", {}).get(task)
    samples_sha = None
    if samples:
        parts = [
            f"{s.get('doc_hash', '')}{s.get('prompt_hash', '')}{s.get('target_hash', '')}"
            for s in samples
        ]
        samples_sha = hashlib.sha256("".join(parts).encode()).hexdigest()
    cfg = out.get("configs", {}).get(task)
    version = out.get("versions", {}).get(task)
    return TaskScore(
        task=task,
        output_type=(cfg or {}).get("output_type"),
        version=None if version is None else str(version),
        config_sha256=_sha256(cfg) if cfg is not None else None,
        samples_sha256=samples_sha,
        num_fewshot=out.get("n-shot", {}).get(task),
        n_items=n_items,
        n_items_available=counts.get("original"),
        metrics=metrics,
        stderr=stderr,
        primary_metric=primary,
        correct=correct,
    )


def assemble(
    out: dict[str, Any],
    *,
    energy_j: float | None,
    duration_s: float,
    input_tokens: int,
    output_tokens: int,
    settings: dict[str, object],
) -> EvaluationResult:
    """The result block: lm-eval's scores per task plus the pass's efficiency figures."""
    import lm_eval

    scores = [task_score(t, out) for t in sorted(out.get("n-samples", {}))]
    n_items = sum(s.n_items for s in scores)
    counted = [s for s in scores if s.correct is not None]
    correct = sum(s.correct or 0.0 for s in counted) if counted else None
    counted_items = sum(s.n_items for s in counted)
    return EvaluationResult(
        lm_eval_version=str(getattr(lm_eval, "__version__", "unknown")),
        tasks=scores,
        n_items=n_items,
        correct=correct,
        accuracy=correct / counted_items if correct is not None and counted_items else None,
        gpu_energy_j=energy_j,
        duration_s=duration_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        j_per_item=energy_j / n_items if energy_j is not None and n_items else None,
        j_per_correct=energy_j / correct if energy_j is not None and correct else None,
        quality_per_joule=(
            correct / energy_j
            if energy_j is not None and correct is not None and energy_j > 0
            else None
        ),
        settings=settings,
    )
