"""Load a study file (YAML or JSON) and expand it into validated experiments.

Grammar (see ``docs/study-grammar.md``)::

    name: my-study                 # study keys ...
    base: common.yaml              # inherit from another file (relative to this one)
    sweep:                         # grid: Cartesian product of the lists
      backend: [pytorch, vllm]
      precision: [bfloat16, float16]
      pytorch.batch_size: [1, 8]   # scoped: multiplies only pytorch experiments
      decoder.temperature: [0.0, 0.7]
    experiments:                   # explicit list, each merged over the shared fields,
      - {model: tiny-llama, n_prompts: 4}   # appended after the grid
    execution: {n_cycles: 3, cycle_order: interleaved}
    carbon: {grid_gco2_per_kwh: 250, pue: 1.2}   # optional: gCO2e and cost per 1k tokens
    cost: {price_per_kwh: 0.30, currency: EUR}
    notify: {webhooks: [https://hooks.example.org/llem]}   # optional, see config/notify.py
    runner: docker                 # docker | local | auto | slurm (slurm: section)
    images: {vllm: my/vllm:dev}
    model: meta-llama/Llama-3.1-8B # ... everything else is a shared experiment field

Every problem is reported with the file and the path of the key it came from
(``sweep.pytorch.batch_size[2]``, ``experiments[1].model``), all at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from llenergymeasure.config.expansion import expand_study
from llenergymeasure.config.inputs import (
    MAX_NESTING,
    MAX_STUDY_FILE_BYTES,
    check_regular_file,
    echo,
    nesting_problem,
)
from llenergymeasure.config.keys import COMMAND_LINE, check_key_path, deep_merge
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.config.user import UserDefaults
from llenergymeasure.errors import ConfigError

__all__ = [
    "COMMAND_LINE",
    "check_key_path",
    "deep_merge",
    "expand_study",
    "load_study",
    "read_config_file",
    "read_with_bases",
]


# --------------------------------------------------------------------------- reading files


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.MappingNode | yaml.SequenceNode):
            mark = key_node.start_mark
            kind = "mapping" if isinstance(key_node, yaml.MappingNode) else "list"
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a {kind} is used as a key (line {mark.line + 1}); keys must be plain names "
                "(a stray '?', or '{' / '[' at the start of a key?)",
                mark,
            )
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen[key] = True
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a YAML or JSON study file into a mapping.

    Raises:
        ConfigError: missing file, not a regular file, too large or too deeply nested, syntax
            error (with line and column), or not a mapping.
    """
    st = check_regular_file(path)
    if st.st_size > MAX_STUDY_FILE_BYTES:
        raise ConfigError(
            f"is {st.st_size / 1024**2:.0f} MiB; a study file may be at most "
            f"{MAX_STUDY_FILE_BYTES // 1024**2} MiB",
            source=str(path),
            hint="is this the study file? a large sweep is written as lists, not expanded",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", source=str(path)) from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        deep = nesting_problem(data)
    except RecursionError as exc:
        deep = f"mappings and lists nest too deeply (more than {MAX_NESTING} levels)"
        raise ConfigError(deep, source=str(path), hint="a study needs only a few levels") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=str(path)
        ) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"invalid YAML{where}: {problem}",
            source=str(path),
            hint="check indentation and that every 'key: value' has a space after the colon",
        ) from exc
    if deep:
        raise ConfigError(deep, source=str(path), hint="a study needs only a few levels")
    if data is None:
        raise ConfigError("file is empty", source=str(path), hint="add at least 'model:'")
    if not isinstance(data, dict):
        raise ConfigError(
            f"top level must be a mapping of keys, got {type(data).__name__}", source=str(path)
        )
    return data


def read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of the file at ``path`` merged over its ``base:`` files (a cycle is an error)."""
    check_regular_file(path)  # before resolve(): a symlink loop is a message, not a crash
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"'base:' files form a cycle: {cycle}", source=str(chain[0]))
    data = read_config_file(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"base: must be a file path, got {type(base).__name__}", source=str(path))
    base_path = (path.parent / base).expanduser()
    if not base_path.exists() and not base_path.is_symlink():
        raise ConfigError(
            f"base: {echo(base)} not found (looked for {base_path})",
            source=str(path),
            hint="base: paths are relative to the file that names them",
        )
    parent = read_with_bases(base_path, (*chain, path))
    return deep_merge(parent, data)


# --------------------------------------------------------------------------- key paths


# --------------------------------------------------------------------------- expansion


def load_study(
    path: str | Path,
    *,
    user: UserDefaults | None = None,
    overrides: Mapping[str, Any] | None = None,
    execution_overrides: Mapping[str, Any] | None = None,
    runner_overrides: Mapping[str, Any] | None = None,
    results_dir: str | None = None,
) -> StudyConfig:
    """Read, merge (``base:``), expand and validate a study file. See the module docstring."""
    p = Path(path).expanduser()
    data = read_with_bases(p)
    study = expand_study(
        data,
        source=str(path),  # error messages name the file as the user typed it
        base_dir=p.resolve().parent,
        user=user,
        overrides=overrides,
        execution_overrides=execution_overrides,
        runner_overrides=runner_overrides,
        results_dir=results_dir,
    )
    # ...and the study records it absolute, so a resume from another directory finds it.
    return study.model_copy(update={"source": os.path.abspath(p)})
