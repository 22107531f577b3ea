"""Host paths in an experiment, made absolute and checked once, in the loader.

Model, tokenizer, JSONL datasets, workload files, quality task files and LoRA adapters.
"""

from __future__ import annotations

import copy
from pathlib import Path

from llenergymeasure.config.inputs import echo, jsonl_problem
from llenergymeasure.config.lora_paths import resolve_adapter_paths
from llenergymeasure.config.problems import Candidate
from llenergymeasure.config.workloads import resolve_workload_files
from llenergymeasure_contract.architecture import builtin_name_for, is_local_path
from llenergymeasure_contract.evaluation import is_task_file
from llenergymeasure_contract.strict import MAX_TEXT_LEN, control_chars


def resolve_paths(
    cand: Candidate, base_dir: Path, problems: list[str], memo: dict[tuple[str, bool], str]
) -> None:
    """Make local model/tokenizer/dataset paths absolute and check they exist."""
    data = cand.data

    def resolve(value: str, key: str, *, must_exist: bool) -> str:
        if not must_exist and builtin_name_for(value) is not None and not is_local_path(value):
            return value
        if (value, must_exist) in memo:
            return memo[(value, must_exist)]
        resolved = _resolve_one(value, key, must_exist=must_exist)
        memo[(value, must_exist)] = resolved
        return resolved

    def _resolve_one(value: str, key: str, *, must_exist: bool) -> str:
        where = cand.source_of(tuple(key.split(".")))
        if len(value) > MAX_TEXT_LEN or control_chars(value):
            return value  # the experiment's validation names the key and says why
        candidate = Path(value).expanduser()
        if not candidate.is_absolute():
            candidate = base_dir / candidate
        try:
            exists = candidate.exists()
            resolved = str(candidate.resolve()) if exists else None
        except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop
            why = getattr(exc, "strerror", None) or str(exc)
            problem = f"{where}: cannot look up path {echo(value)}: {why}"
            if problem not in problems:
                problems.append(problem)
            return value
        if resolved is not None:
            if key == "dataset.path":
                bad = jsonl_problem(Path(resolved))
                if bad and f"{where}: {bad}" not in problems:
                    problems.append(f"{where}: {bad}")
            return resolved
        if must_exist or is_local_path(value):
            problem = (
                f"{where}: path {echo(value)} does not exist "
                f"(looked for {candidate}); paths are relative to the study file"
            )
            if problem not in problems:
                problems.append(problem)
        return value

    for key in ("model", "tokenizer"):
        value = data.get(key)
        if isinstance(value, str) and value:
            data[key] = resolve(value, key, must_exist=False)
    dataset = data.get("dataset")
    if isinstance(dataset, dict) and dataset.get("source") == "jsonl":
        path = dataset.get("path")
        if isinstance(path, str):
            dataset["path"] = resolve(path, "dataset.path", must_exist=True)
    resolve_workload_files(data, base_dir, cand.source_of, problems)
    quality = data.get("quality")
    if isinstance(quality, dict) and isinstance(quality.get("tasks"), list):
        quality["tasks"] = [
            resolve(t, f"quality.tasks[{i}]", must_exist=True)
            if isinstance(t, str) and is_task_file(t)
            else t
            for i, t in enumerate(quality["tasks"])
        ]
    lora = data.get("lora")
    if isinstance(lora, dict):
        data["lora"] = lora = copy.deepcopy(lora)  # sections may be shared between candidates
        resolve_adapter_paths(
            lora, lambda v, k: resolve(v, k, must_exist=True), cand.source_of(("lora",)), problems
        )
