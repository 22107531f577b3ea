"""Accuracy measured in the same run as energy: the ``quality:`` section and its result.

An experiment with a ``quality:`` section runs, after its performance window and on the same
loaded engine, an lm-evaluation-harness (``lm_eval``) evaluation in its own energy window, and
reports per task the metrics lm-eval computes beside the energy of that pass::

    ... measure ─► prefill pass ─► [evaluation window: lm_eval.simple_evaluate] ─► write

:class:`QualityConfig` is the section (sweepable like any other); :class:`EvaluationResult`
the block of the result. ``quality_per_joule`` is defined in ``docs/methodology.md``: correct
answers per joule of GPU energy of the evaluation pass (accuracy / J per item).

This module is not :mod:`llenergymeasure_harness.quality`, which flags the data quality of a
measurement.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llenergymeasure_contract.strict import MAX_SEED, StrictModel

#: The lm-evaluation-harness release the extras pin, and the command that installs it.
LM_EVAL_VERSION = "0.4.13"
LM_EVAL_EXTRA = "llenergymeasure[lm-eval]"
LM_EVAL_INSTALL = f"pip install '{LM_EVAL_EXTRA}'"
#: Suffixes that make a ``quality.tasks`` entry a task YAML file rather than a task name.
TASK_FILE_SUFFIXES = (".yaml", ".yml")

OutputType = Literal["loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until"]
#: Output types that need the engine's log-probabilities of given text.
LOGLIKELIHOOD_TYPES = frozenset({"loglikelihood", "loglikelihood_rolling", "multiple_choice"})
#: Well-known lm-eval hub task families scored by log-likelihood (prefix match), so a backend
#: that cannot return log-probabilities is refused at load; other names are checked in the
#: harness, where lm-eval knows each task's output type.
KNOWN_LOGLIKELIHOOD_TASKS = (
    "mmlu",
    "hellaswag",
    "arc_easy",
    "arc_challenge",
    "winogrande",
    "piqa",
    "boolq",
    "openbookqa",
    "sciq",
    "lambada",
    "truthfulqa_mc",
    "wikitext",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityConfig(StrictModel):
    """lm-eval tasks scored on the measured engine, in their own energy window."""

    tasks: list[str] = Field(
        min_length=1,
        description="lm-eval task or group names (mmlu, hellaswag, gsm8k, ...) or paths to "
        "task YAML files (relative to the study file; their data files relative to them).",
    )
    limit: int | None = Field(
        None, ge=1, description="Items per task (the first N); None: every item."
    )
    num_fewshot: int | None = Field(
        None, ge=0, description="Few-shot examples per item; None: each task's own default."
    )
    seed: int = Field(
        1234,
        ge=0,
        le=MAX_SEED,
        description="Seed of Python, NumPy, torch and the few-shot sampler (lm-eval's default "
        "for the last three).",
    )
    batch_size: int = Field(8, ge=1, description="Requests the engine scores at once.")
    apply_chat_template: bool = Field(
        False, description="Wrap prompts in the tokenizer's chat template (lm-eval's flag)."
    )
    fewshot_as_multiturn: bool = Field(
        False, description="Few-shot examples as chat turns (needs apply_chat_template)."
    )
    system_instruction: str | None = Field(None, description="System prompt for every item.")
    max_length: int = Field(
        2048,
        ge=16,
        description="Longest context scored, in tokens (longer inputs are cut "
        "from the left, as lm-eval's own models do).",
    )
    bootstrap_iters: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples for stderr of non-mean metrics "
        "(lm-eval's default is 100000; mean metrics use the closed form).",
    )

    @field_validator("tasks")
    @classmethod
    def _named(cls, value: list[str]) -> list[str]:
        for task in value:
            if not task.strip():
                raise ValueError("task names must not be empty")
        if len(set(value)) != len(value):
            raise ValueError(f"tasks must be unique, got {value}")
        return value

    @field_validator("fewshot_as_multiturn")
    @classmethod
    def _multiturn(cls, value: bool, info: object) -> bool:
        data = getattr(info, "data", {}) or {}
        if value and not data.get("apply_chat_template"):
            raise ValueError("quality.fewshot_as_multiturn needs quality.apply_chat_template: true")
        return value

    def task_files(self) -> list[str]:
        """The entries that are task YAML files (paths), in order."""
        return [t for t in self.tasks if is_task_file(t)]

    def task_names(self) -> list[str]:
        """The entries that are lm-eval task or group names, in order."""
        return [t for t in self.tasks if not is_task_file(t)]


def is_task_file(task: str) -> bool:
    """True for a ``quality.tasks`` entry that names a task YAML file rather than a task."""
    return task.lower().endswith(TASK_FILE_SUFFIXES)


def known_loglikelihood_task(name: str) -> bool:
    """True for a hub task name known to be scored by log-likelihood (see the table)."""
    lowered = name.lower()
    return any(lowered == p or lowered.startswith(p + "_") for p in KNOWN_LOGLIKELIHOOD_TASKS)


def loglikelihood_support(config: Any) -> tuple[bool, str]:
    """Whether ``config``'s engine can return log-probabilities of given text, and its name.

    The backend's registry entry says: ``BackendSpec.supports_loglikelihood`` in process (and
    its ``loglikelihood_gap`` for this configuration, such as a TensorRT engine built without
    context logits), ``server_loglikelihood`` in server mode (``vllm serve`` answers
    ``/v1/completions`` with ``echo`` and ``logprobs``; ``transformers serve`` ignores both), and
    for ``backend: endpoint`` the section key the user sets (``loglikelihood_key``).
    """
    from llenergymeasure_contract.registry import REGISTRY

    spec = REGISTRY.get(config.backend)
    if config.server is not None:
        return spec.server_loglikelihood, f"{config.backend} in server mode ({spec.serve_command})"
    if spec.loglikelihood_key is not None:
        section = getattr(config, spec.name, None)
        return bool(getattr(section, spec.loglikelihood_key, False)), f"backend {config.backend}"
    gap = spec.loglikelihood_gap(config) if spec.loglikelihood_gap is not None else None
    if spec.supports_loglikelihood and gap:
        return False, f"backend {config.backend} ({gap})"
    return spec.supports_loglikelihood, f"backend {config.backend}"


def _loglikelihood_fix(config: Any) -> str:
    """How to run a log-likelihood task that ``config``'s engine cannot score."""
    from llenergymeasure_contract.registry import REGISTRY

    spec = REGISTRY.get(config.backend)
    fix = "use a generate_until task (e.g. gsm8k)"
    if config.server is None and spec.loglikelihood_key is not None:
        key = f"{spec.name}.{spec.loglikelihood_key}"
        return (
            f"{key} is false (a chat-only server); set {key}: true if the server answers "
            "/v1/completions with echo and logprobs (vLLM, SGLang), or " + fix
        )
    servers = [s.name for s in REGISTRY if s.server_loglikelihood]
    if config.server is not None and servers:
        fix += f", backend {'/'.join(servers)} in server mode,"
    return fix + " or backend pytorch/vllm in process"


def loglikelihood_refusal(task: str, output_type: str | None, config: Any) -> str | None:
    """The message refusing ``task`` on ``config``'s engine, or None when it can run.

    ``output_type`` is the task's (from its YAML); None for a hub name, judged by the table
    of :data:`KNOWN_LOGLIKELIHOOD_TASKS`.
    """
    needs = (
        output_type in LOGLIKELIHOOD_TYPES
        if output_type is not None
        else known_loglikelihood_task(task)
    )
    if not needs:
        return None
    ok, engine = loglikelihood_support(config)
    if ok:
        return None
    kind = output_type or "multiple_choice"
    return (
        f"quality.tasks: task {task!r} is scored by log-likelihood ({kind}), which {engine} "
        f"cannot return; {_loglikelihood_fix(config)}"
    )


def quality_problem(config: Any) -> str | None:
    """The first rule ``config``'s quality section breaks (no I/O), or None.

    Task YAML files are read by the study loader, which checks their output types the same
    way (:func:`loglikelihood_refusal`).
    """
    quality: QualityConfig = config.quality
    if config.load_format == "dummy":
        return (
            "quality: scores the model's answers, but load_format: dummy builds random "
            "weights, which have no accuracy; set load_format: auto with a real checkpoint "
            "(hub id or local folder), or remove quality:"
        )
    for task in quality.task_names():
        refusal = loglikelihood_refusal(task, None, config)
        if refusal:
            return refusal
    return None


class TaskScore(_Model):
    """One lm-eval task's scores (lm-eval's numbers, unchanged) and provenance."""

    task: str
    output_type: str | None = None
    version: str | None = None  # the task YAML's metadata.version
    config_sha256: str | None = None  # of the resolved task config lm-eval reports
    samples_sha256: str | None = None  # of every item's doc, prompt and target hashes
    num_fewshot: int | None = None
    n_items: int  # items scored (after limit)
    n_items_available: int | None = None  # items in the split
    metrics: dict[str, float | None] = Field(default_factory=dict)  # "acc,none" -> value
    stderr: dict[str, float | None] = Field(default_factory=dict)  # "acc,none" -> stderr
    primary_metric: str | None = None  # the accuracy-type metric correct answers count
    correct: float | None = None  # items answered correctly by primary_metric


class EvaluationResult(_Model):
    """The evaluation pass: scores, and the energy, time and tokens of its own window."""

    lm_eval_version: str
    tasks: list[TaskScore]
    n_items: int
    correct: float | None = None  # summed over tasks with an accuracy-type metric
    accuracy: float | None = None  # correct / items of those tasks
    gpu_energy_j: float | None = None  # None: not measured (no GPU)
    duration_s: float
    input_tokens: int  # tokens the engine read (scored contexts and continuations, prompts)
    output_tokens: int  # tokens it generated
    j_per_item: float | None = None
    j_per_correct: float | None = None
    quality_per_joule: float | None = None  # correct answers per J (docs/methodology.md)
    settings: dict[str, object] = Field(default_factory=dict)  # what simple_evaluate was given


__all__ = [
    "KNOWN_LOGLIKELIHOOD_TASKS",
    "LM_EVAL_EXTRA",
    "LM_EVAL_INSTALL",
    "LM_EVAL_VERSION",
    "LOGLIKELIHOOD_TYPES",
    "TASK_FILE_SUFFIXES",
    "EvaluationResult",
    "QualityConfig",
    "TaskScore",
    "is_task_file",
    "known_loglikelihood_task",
    "loglikelihood_refusal",
    "loglikelihood_support",
    "quality_problem",
]
