"""Host paths named in a config, mapped to container paths and read-only bind mounts."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure_contract.architecture import is_local_path
from llenergymeasure_contract.evaluation import is_task_file

CONTAINER_INPUTS = "/llem/inputs"


@dataclass(frozen=True)
class Mount:
    """A bind mount: host ``source`` seen at ``target`` in the container."""

    source: str
    target: str
    read_only: bool = False


# Mounting a user path over one of these would shadow the image itself.
_RESERVED_PREFIXES = (
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib64",
    "/llem",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/app",
    "/workspace",
)


def _reserved(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in _RESERVED_PREFIXES)


class _Mounter:
    """Maps host paths to container paths, one read-only mount per source.

    A host path is mounted at the same absolute path when that cannot shadow the image, so
    the config the harness sees (and its ``config_hash``) is the host's; otherwise (and for
    paths under system directories) under ``/llem/inputs/<role>/``.
    """

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.mounts: dict[str, Mount] = {}

    def map(self, role: str, host_path: str) -> str:
        expanded = str(Path(host_path).expanduser())
        source = posixpath.normpath(posixpath.join(self.base_dir, expanded))
        if source in self.mounts:
            return self.mounts[source].target
        target = source
        if _reserved(source):
            name = posixpath.basename(source) or role
            target = f"{CONTAINER_INPUTS}/{role}/{name}"
            taken = {m.target for m in self.mounts.values()}
            n = 1
            while target in taken:
                n += 1
                target = f"{CONTAINER_INPUTS}/{role}{n}/{name}"
        self.mounts[source] = Mount(source=source, target=target, read_only=True)
        return target


def _model_is_served_name(config: dict[str, Any]) -> bool:
    from llenergymeasure_contract.registry import REGISTRY

    backend = config.get("backend")
    if not isinstance(backend, str) or backend not in REGISTRY.names():
        return False
    return REGISTRY.get(backend).model_is_served_name


def rewrite_host_paths(
    config: dict[str, Any], base_dir: str = "/"
) -> tuple[dict[str, Any], tuple[Mount, ...]]:
    """Return the config dict with host paths replaced by container paths, and the mounts.

    Handles ``model`` (kept, for a backend whose model is a served name, with its tokenizer
    read from the mount), ``tokenizer``, a JSONL ``dataset.path``, the folders of
    ``quality.tasks`` YAML files and LoRA adapter directories (``lora.adapters[i].path``);
    other fields pass through.
    Relative paths are taken relative to ``base_dir``. Absolute paths outside system
    directories are left unchanged (mounted at the same place).
    """
    out = json.loads(json.dumps(config))  # deep copy of a JSON-shaped dict
    mounter = _Mounter(base_dir)
    tokenizer = out.get("tokenizer")
    if isinstance(tokenizer, str) and is_local_path(tokenizer):
        out["tokenizer"] = mounter.map("tokenizer", tokenizer)
    model = out.get("model")
    if isinstance(model, str) and is_local_path(model):
        if not _model_is_served_name(out):
            out["model"] = mounter.map("model", model)
        elif tokenizer is None:  # the server's name stays; its folder lends the tokenizer
            out["tokenizer"] = mounter.map("model", model)
    dataset = out.get("dataset")
    if isinstance(dataset, dict):
        path = dataset.get("path")
        if isinstance(path, str):  # always a file path (relative ones: to base_dir)
            dataset["path"] = mounter.map("dataset", path)
    quality = out.get("quality")
    if isinstance(quality, dict) and isinstance(quality.get("tasks"), list):
        # A task YAML's folder is mounted whole: its data files sit beside it.
        quality["tasks"] = [
            posixpath.join(mounter.map("tasks", posixpath.dirname(t)), posixpath.basename(t))
            if isinstance(t, str) and is_task_file(t)
            else t
            for t in quality["tasks"]
        ]
    lora = out.get("lora")
    for entry in lora.get("adapters", []) if isinstance(lora, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = mounter.map("lora", entry["path"])  # a LoRA adapter directory
    return out, tuple(mounter.mounts.values())
