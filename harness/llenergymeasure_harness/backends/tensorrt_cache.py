"""The TensorRT-LLM engine cache: what identifies a built engine (config, release, GPU,
weights) and the directory that keeps engines across runs, published atomically under a lock.

Used by :class:`~llenergymeasure_harness.backends.tensorrt.TensorRTBackend`; re-exported from
:mod:`~llenergymeasure_harness.backends.tensorrt`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure_contract.experiment import ExperimentConfig
from llenergymeasure_harness.backends.engine_common import ModelSource, jsonable
from llenergymeasure_harness.backends.tensorrt_args import (
    build_config_dict,
    quant_config_dict,
    tensorrt_section,
)

logger = logging.getLogger("llenergymeasure_harness.backends.tensorrt")

#: Bump when the cache layout or the key's meaning changes.
CACHE_SCHEMA = 1
MARKER_FILE = "llem-engine.json"

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model", ".tiktoken")


# --------------------------------------------------------------------------- engine cache


def model_fingerprint(source: ModelSource) -> dict[str, Any]:
    """What identifies the weights: the architecture config, and for a local directory the
    name, size and mtime of its weight/config files (so replaced weights miss the cache)."""
    out: dict[str, Any] = {
        "hf_config": source.architecture.hf_config if source.architecture is not None else None
    }
    path = Path(source.model)
    if source.dummy_dir is None and path.is_dir():
        files = []
        for item in sorted(path.iterdir()):
            if item.is_file() and item.name.endswith(_WEIGHT_SUFFIXES):
                stat = item.stat()
                files.append([item.name, stat.st_size, stat.st_mtime_ns])
        out["files"] = files
    return out


def engine_cache_key_payload(
    config: ExperimentConfig,
    *,
    trtllm_version: str,
    gpu_identity: str,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything that changes a built engine, as a JSON-ready dict (pure)."""
    section = tensorrt_section(config)
    return {
        "schema": CACHE_SCHEMA,
        "model": config.model,
        "revision": config.revision,
        "load_format": config.load_format,
        "model_fingerprint": dict(fingerprint),
        "dtype": config.precision,
        "quant_config": quant_config_dict(config),
        "tensor_parallel_size": section.tensor_parallel_size,
        "pipeline_parallel_size": section.pipeline_parallel_size,
        "build_config": build_config_dict(config),
        "enable_chunked_prefill": section.enable_chunked_prefill,
        # Passthrough LLM arguments may change the build (calib_config, fast_build,
        # speculative_config...); keyed conservatively.
        "llm_args": jsonable(section.llm_args),
        "trtllm_version": trtllm_version,
        "gpu": gpu_identity,
    }


def engine_cache_key(
    config: ExperimentConfig,
    *,
    trtllm_version: str,
    gpu_identity: str,
    fingerprint: Mapping[str, Any],
) -> str:
    """The cache directory name: sha256 of the canonical payload (24 hex characters)."""
    payload = engine_cache_key_payload(
        config, trtllm_version=trtllm_version, gpu_identity=gpu_identity, fingerprint=fingerprint
    )
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CachedEngine:
    """A complete entry in the engine cache."""

    path: Path
    meta: dict[str, Any]


class EngineCache:
    """Built engines in a directory shared by experiments (and containers) on one host."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> CachedEngine | None:
        """The complete engine for ``key``, or None (an entry without its marker is junk)."""
        path = self.entry(key)
        marker = path / MARKER_FILE
        if not marker.is_file():
            return None
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            logger.warning("engine cache entry %s has an unreadable marker; rebuilding", path)
            return None
        return CachedEngine(path=path, meta=meta if isinstance(meta, dict) else {})

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``<key>.lock`` (released if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o664)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("another process is building engine %s; waiting for it", key)
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def staging_dir(self, key: str) -> Path:
        """A fresh temporary directory next to the entry (same filesystem: rename is atomic)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        return path

    def publish(self, key: str, staging: Path, meta: Mapping[str, Any]) -> CachedEngine:
        """Write the marker into ``staging`` and rename it to the entry (call under lock)."""
        (staging / MARKER_FILE).write_text(
            json.dumps(dict(meta), indent=2, sort_keys=True, default=str), encoding="utf-8"
        )
        target = self.entry(key)
        if target.exists():  # a marker-less leftover of a crash
            shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
        return CachedEngine(path=target, meta=dict(meta))
