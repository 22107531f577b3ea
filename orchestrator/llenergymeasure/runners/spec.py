"""What one experiment run needs from a container or a process, built without any I/O.

:class:`ContainerSpec` is the pure description of one experiment's container: image, command,
environment, bind mounts, GPUs, IPC/shared memory, ulimits, user, labels and limits. It is built
by :func:`build_container_spec` from a :class:`RunRequest` and :class:`ContainerSettings`, and only
the Docker runner turns it into docker-SDK calls. :class:`LocalSpec` is the same for a
subprocess on the host (:func:`build_local_spec`).

Paths the user wrote on the host (a model directory, a ``config.json`` for dummy weights, a
tokenizer, a JSONL dataset) are bind-mounted read-only. An absolute path outside the system
directories is mounted at the same path, so the config the harness sees is the host's and so
is its ``config_hash``; a relative or ``~`` path becomes absolute, and a path under a system
directory is mounted under ``/llem/inputs/<role>/``; the config JSON handed to the harness is
rewritten accordingly. The run's identity (host ``config_hash``) travels in the labels.

Container layout::

    /llem/results          per-run results dir (rw)      LLEM_RESULTS_DIR
    /llem/cache/hf         host Hugging Face cache (rw)  HF_HOME
    /llem/cache/llem       study cache dir (rw)          LLEM_BASELINE_CACHE (baseline.json in it)
    /llem/cache/engines    TensorRT-LLM engine cache     LLEM_ENGINE_CACHE_DIR
    /llem/cache/compile    compile caches of this image  LLEM_COMPILE_CACHE_DIR (host dir
                           <compile_cache_dir>/<image key>; the harness keys it further by
                           engine/torch/Triton version and points Inductor, Triton and vLLM
                           at it: llenergymeasure_harness.compile_cache)
    /llem/inputs/<role>/   host paths named in the config (ro)
    HOME=/tmp              writable for any uid
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llenergymeasure._version import __version__
from llenergymeasure.runners.mounts import Mount, rewrite_host_paths
from llenergymeasure_contract.env import ENV_CONFIG_JSON, ENV_GROUP_FILE, MULTICAST_OFF
from llenergymeasure_contract.registry import REGISTRY

if TYPE_CHECKING:
    from llenergymeasure.config import ExperimentConfig

CONTAINER_RESULTS_DIR = "/llem/results"
CONTAINER_HF_CACHE = "/llem/cache/hf"
CONTAINER_STUDY_CACHE = "/llem/cache/llem"
CONTAINER_ENGINE_CACHE = "/llem/cache/engines"
CONTAINER_COMPILE_CACHE = "/llem/cache/compile"
CONTAINER_HOME = "/tmp"

LABEL_STUDY = "llem.study"
LABEL_EXPERIMENT = "llem.experiment"
LABEL_RUN = "llem.run"
LABEL_CYCLE = "llem.cycle"
LABEL_VERSION = "llem.version"
LABEL_OWNER_PID = "llem.owner_pid"
LABEL_OWNER_HOST = "llem.owner_host"
LABEL_GROUP = "llem.group"  # execution.reuse_engine: the engine group a container runs
CONTAINER_GROUP_DIR = "/llem/group"  # the other members' results folders, one each

HARNESS_COMMAND: tuple[str, ...] = ("python3", "-m", "llenergymeasure_harness")

# Caches that engines write under $HOME by default; pointed at writable places because the
# container runs as the invoking user, whose HOME inside the image does not exist.
_WRITABLE_CACHE_ENV = {
    "HOME": CONTAINER_HOME,
    "XDG_CACHE_HOME": f"{CONTAINER_HOME}/.cache",
    "TRITON_CACHE_DIR": f"{CONTAINER_HOME}/.cache/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{CONTAINER_HOME}/.cache/torchinductor",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass(frozen=True)
class ContainerSettings:
    """Host-level knobs for containers; the study and user config fill these.

    ``shm_size``, ``ulimits`` and ``ipc_mode`` of ``None`` mean "the backend's default"
    (its :class:`~llenergymeasure_contract.registry.ContainerDefaults`); an empty dict means
    "no ulimits". With ``run_as_host_user`` the container runs as the request's host
    uid:gid (filled by the caller, which may do I/O).
    """

    network_mode: str = "host"
    shm_size: str | None = None
    ipc_mode: str | None = None
    ulimits: Mapping[str, int | tuple[int, int]] | None = None  # value or (soft, hard)
    mem_limit: str | None = None
    hf_cache_dir: str | None = None
    engine_cache_dir: str | None = None
    compile_cache_dir: str | None = None  # host root; one subdirectory per image
    run_as_host_user: bool = True
    init: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None  # None: the harness entry point
    stop_grace_s: float = 10.0
    # False only for CPU-only hosts (CI, laptops): containers then get no GPU at all. This is
    # an explicit setting, never a silent fallback; the runner logs it for every run.
    request_gpus: bool = True


@dataclass(frozen=True)
class RunRequest:
    """One planned run (experiment x cycle) and where its files go on the host."""

    config: ExperimentConfig
    study_id: str
    run_id: str
    cycle: int
    run_dir: Path
    log_path: Path
    image: str | None = None
    image_digest: str | None = None
    image_labels: Mapping[str, str] | None = None
    study_cache_dir: Path | None = None  # holds the baseline cache shared across runs
    timeout_s: float | None = None
    host_uid: int | None = None
    host_gid: int | None = None
    version: str = __version__
    input_base_dir: str | None = None  # resolves relative input paths; None: working dir
    #: execution.reuse_engine: this request is the first run of a group that shares its
    #: loaded engine with the others (one container or subprocess for all of them)
    group: GroupRequest | None = None


@dataclass(frozen=True)
class GroupRequest:
    """Runs sharing one loaded engine, run by one harness process (``LLEM_GROUP_FILE``).

    Attributes:
        group_id: The plan's group id (``g<N>``).
        engine_key: The members' shared load-time hash.
        members: Every run's request, in run order (the first is the one handed to the
            runner, whose ``group`` this is).
        config_gap_s: The thermal rest between two members, taken inside the harness.
    """

    group_id: str
    engine_key: str
    members: tuple[RunRequest, ...]
    config_gap_s: float = 0.0

    def file_host(self) -> Path:
        """Where the runner writes the group file on the host (the study cache, else the
        first run's folder)."""
        first = self.members[0]
        base = first.study_cache_dir if first.study_cache_dir is not None else first.run_dir
        return base / "groups" / f"{self.group_id}_{first.run_id}.json"

    @property
    def timeout_s(self) -> float | None:
        """The members' timeouts and gaps added up (None when any run has none)."""
        limits = [m.timeout_s for m in self.members]
        if any(t is None for t in limits):
            return None
        return sum(t for t in limits if t is not None) + self.config_gap_s * (len(self.members) - 1)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything the Docker runner passes to ``containers.create``; no docker types here."""

    image: str
    command: tuple[str, ...] | None
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    gpu_ids: tuple[int, ...]  # empty: no GPU requested, on purpose (CPU experiment)
    shm_size: str | None
    ipc_mode: str | None
    ulimits: Mapping[str, int | tuple[int, int]]
    user: str | None
    labels: Mapping[str, str]
    network_mode: str
    mem_limit: str | None
    init: bool
    timeout_s: float | None
    stop_grace_s: float
    name: str
    results_dir_host: str
    config_json: str  # the config the harness sees (host paths mapped into the container)
    group_file: GroupFile | None = None  # engine groups: written by the runner before start


@dataclass(frozen=True)
class LocalSpec:
    """A harness subprocess on the host: same env contract, host paths."""

    command: tuple[str, ...]
    env: Mapping[str, str]
    results_dir: str
    timeout_s: float | None
    stop_grace_s: float = 10.0
    group_file: GroupFile | None = None  # engine groups: written by the runner before start


@dataclass(frozen=True)
class GroupFile:
    """The :class:`~llenergymeasure_contract.reuse.EngineGroup` a runner writes for the
    harness (``LLEM_GROUP_FILE``): its host path and its JSON."""

    path_host: str
    json_text: str

    def write(self) -> None:
        """Write it (the runner calls this just before starting the harness)."""
        path = Path(self.path_host)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.json_text, encoding="utf-8")


def group_file(
    group: GroupRequest,
    *,
    results_dir_of: Mapping[str, str],
    config_of: Mapping[str, ExperimentConfig],
) -> GroupFile:
    """The group file of ``group``, with each member's results folder and config as the
    harness will see them (pure)."""
    from llenergymeasure_contract.reuse import EngineGroup, GroupMember

    doc = EngineGroup(
        group_id=group.group_id,
        engine_key=group.engine_key,
        members=[
            GroupMember(
                run_id=m.run_id,
                config=config_of[m.run_id],
                results_dir=results_dir_of[m.run_id],
                cycle=m.cycle,
                config_hash=m.config.config_hash,  # the host's identity
            )
            for m in group.members
        ],
        config_gap_s=group.config_gap_s,
    )
    return GroupFile(str(group.file_host()), doc.model_dump_json(indent=1))


def compile_cache_key(image: str | None, digest: str | None) -> str:
    """The per-image subdirectory of the host compile cache (pure).

    The image reference, made path-safe, plus the first 12 hex of its digest when known: a
    rebuilt image under the same tag gets a fresh directory, so compiled kernels of one
    engine build are never loaded by another.
    """
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in (image or "local"))
    tail = (digest or "").rsplit(":", 1)[-1][:12]
    return f"{name[:100]}-{tail}" if tail else name[:100]


def local_compile_cache_key(python: str) -> str:
    """The subdirectory for the local runner: one per Python interpreter (its environment)."""
    return "local-" + hashlib.sha1(python.encode()).hexdigest()[:12]


def harness_env(
    request: RunRequest,
    *,
    config: ExperimentConfig,
    results_dir: str,
    baseline_cache: str | None,
    engine_cache_dir: str | None = None,
    compile_cache_dir: str | None = None,
) -> dict[str, str]:
    """The harness environment contract (``llenergymeasure.contract``) for one run."""
    from llenergymeasure.contract import HarnessEnv

    env = HarnessEnv(
        config=config,
        run_id=request.run_id,
        results_dir=results_dir,
        cycle=request.cycle,
        study_id=request.study_id,
        image=request.image,
        image_digest=request.image_digest,
        image_labels=dict(request.image_labels or {}),
        baseline_cache=baseline_cache,
        engine_cache_dir=engine_cache_dir,
        compile_cache_dir=compile_cache_dir,
        host_uid=request.host_uid,
        host_gid=request.host_gid,
        config_hash=request.config.config_hash,  # the host's, whatever paths were rewritten
    )
    return env.to_env()


def host_harness_env(
    request: RunRequest,
    *,
    python: str,
    hf_cache_dir: str | None = None,
    engine_cache_dir: str | None = None,
    compile_cache_dir: str | None = None,
) -> dict[str, str]:
    """The harness environment of a run on this host or a node, with host paths: the one
    builder of the local runner and the Slurm local launcher (the Docker runner maps the same
    caches into the container, :func:`build_container_spec`).

    Args:
        request: The run.
        python: The interpreter that runs the harness (keys the compile cache).
        hf_cache_dir: ``HF_HOME`` (``None``: the environment's own).
        engine_cache_dir: The engine cache, for backends that use one.
        compile_cache_dir: The compile-cache root; the run gets its interpreter's subfolder.
    """
    env = {"PYTHONUNBUFFERED": "1"}
    if hf_cache_dir:
        env["HF_HOME"] = hf_cache_dir
    baseline_cache = (
        str(request.study_cache_dir / "baseline.json")
        if request.study_cache_dir is not None
        else None
    )
    uses_engine_cache = REGISTRY.get(str(request.config.backend)).uses_engine_cache
    env.update(
        harness_env(
            request,
            config=request.config,
            results_dir=str(request.run_dir),
            baseline_cache=baseline_cache,
            engine_cache_dir=engine_cache_dir if uses_engine_cache else None,
            compile_cache_dir=(
                posixpath.join(compile_cache_dir, local_compile_cache_key(python))
                if compile_cache_dir
                else None
            ),
        )
    )
    return env


def container_name(request: RunRequest, owner_pid: int | None = None) -> str:
    """A readable container name, unique per study and process (Docker allows [a-zA-Z0-9_.-]).

    Two studies (or test sessions) running the same experiment at once must not collide on
    the name, so the study id's digest and the owning pid are part of it.
    """
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in request.run_id)
    study = hashlib.sha1(request.study_id.encode()).hexdigest()[:8]
    pid = f"-{owner_pid}" if owner_pid is not None else ""
    return f"llem-{safe[:80]}-{study}{pid}"


def host_compile_cache_dir(request: RunRequest, settings: ContainerSettings) -> str | None:
    """The host directory mounted as the container's compile cache (None: no cache)."""
    if not settings.compile_cache_dir:
        return None
    key = compile_cache_key(request.image, request.image_digest)
    return posixpath.join(settings.compile_cache_dir, key)


def _container_config(
    config: ExperimentConfig, base_dir: str
) -> tuple[ExperimentConfig, tuple[Mount, ...]]:
    """The config the container sees (host paths mapped, :func:`rewrite_host_paths`) and the
    mounts that map them.

    Only the paths change, so it is a copy, not a third validation: the loader validated the
    config on the host and the harness validates it once more in the container.
    """
    original = config.model_dump(mode="json")
    cfg_dict, mounts = rewrite_host_paths(original, base_dir)
    if cfg_dict == original:
        return config, mounts
    update: dict[str, Any] = {
        k: cfg_dict[k] for k in ("model", "tokenizer") if cfg_dict.get(k) != original.get(k)
    }
    if cfg_dict.get("dataset") != original.get("dataset"):
        update["dataset"] = config.dataset.model_copy(update={"path": cfg_dict["dataset"]["path"]})
    for key in ("quality", "lora"):  # task YAML folders, adapter directories: that section only
        section = getattr(config, key)
        if section is not None and cfg_dict.get(key) != original.get(key):
            update[key] = type(section).model_validate(cfg_dict[key])
    return config.model_copy(update=update), mounts


def _add_group(
    request: RunRequest,
    group: GroupRequest,
    config: ExperimentConfig,
    *,
    mounts: list[Mount],
    env: dict[str, str],
    base_dir: str,
) -> GroupFile:
    """Mount the other members' results folders and inputs; point the harness at the group file."""
    results_dir_of = {request.run_id: CONTAINER_RESULTS_DIR}
    config_of = {request.run_id: config}
    taken = {m.target for m in mounts}
    for member in group.members[1:]:
        target = f"{CONTAINER_GROUP_DIR}/{member.run_id}"
        mounts.append(Mount(str(member.run_dir), target))
        results_dir_of[member.run_id] = target
        m_original = member.config.model_dump(mode="json")
        m_dict, m_mounts = rewrite_host_paths(m_original, base_dir)
        config_of[member.run_id] = (
            type(member.config).model_validate(m_dict) if m_dict != m_original else member.config
        )
        for mount in m_mounts:
            if mount.target not in taken:
                mounts.append(mount)
                taken.add(mount.target)
    group_doc = group_file(group, results_dir_of=results_dir_of, config_of=config_of)
    name = Path(group_doc.path_host).name
    base = CONTAINER_STUDY_CACHE if request.study_cache_dir is not None else CONTAINER_RESULTS_DIR
    env[ENV_GROUP_FILE] = f"{base}/groups/{name}"
    return group_doc


def _labels(request: RunRequest, owner_pid: int | None, owner_host: str | None) -> dict[str, str]:
    """The container's labels: the run's identity (the host's ``config_hash``) and its owner."""
    labels = {
        LABEL_STUDY: request.study_id,
        LABEL_EXPERIMENT: str(request.config.config_hash),  # the host's identity
        LABEL_RUN: request.run_id,
        LABEL_CYCLE: str(request.cycle),
        LABEL_VERSION: request.version,
    }
    if owner_pid is not None:
        labels[LABEL_OWNER_PID] = str(owner_pid)
    if owner_host is not None:
        labels[LABEL_OWNER_HOST] = owner_host
    if request.group is not None:
        labels[LABEL_GROUP] = request.group.group_id
    return labels


def build_container_spec(
    request: RunRequest,
    settings: ContainerSettings,
    *,
    base_dir: str = "/",
    owner_pid: int | None = None,
    owner_host: str | None = None,
) -> ContainerSpec:
    """Build the container description for ``request``. Pure: no filesystem or Docker access.

    ``base_dir`` resolves relative host paths in the config (the caller passes the study
    file's directory or the working directory).
    """
    if request.image is None:
        raise ValueError(f"run {request.run_id}: no image resolved for the Docker runner")
    config = request.config
    spec = REGISTRY.get(str(config.backend))
    config, input_mounts = _container_config(config, base_dir)

    mounts: list[Mount] = [Mount(str(request.run_dir), CONTAINER_RESULTS_DIR)]
    baseline_cache: str | None = None
    if request.study_cache_dir is not None:
        mounts.append(Mount(str(request.study_cache_dir), CONTAINER_STUDY_CACHE))
        baseline_cache = f"{CONTAINER_STUDY_CACHE}/baseline.json"
    env: dict[str, str] = dict(_WRITABLE_CACHE_ENV)
    env.update(MULTICAST_OFF)  # before the user's docker.env, which may turn NVLS back on
    env.update({k: v.replace("$HOME", CONTAINER_HOME) for k, v in spec.container.env.items()})
    if settings.hf_cache_dir:
        mounts.append(Mount(settings.hf_cache_dir, CONTAINER_HF_CACHE))
        env["HF_HOME"] = CONTAINER_HF_CACHE
    engine_cache: str | None = None
    if settings.engine_cache_dir and spec.uses_engine_cache:
        mounts.append(Mount(settings.engine_cache_dir, CONTAINER_ENGINE_CACHE))
        engine_cache = CONTAINER_ENGINE_CACHE
    compile_cache: str | None = None
    host_compile = host_compile_cache_dir(request, settings)
    if host_compile is not None:
        mounts.append(Mount(host_compile, CONTAINER_COMPILE_CACHE))
        compile_cache = CONTAINER_COMPILE_CACHE
    mounts.extend(input_mounts)
    env.update(settings.extra_env)
    env.update(
        harness_env(
            request,
            config=config,
            results_dir=CONTAINER_RESULTS_DIR,
            baseline_cache=baseline_cache,
            engine_cache_dir=engine_cache,
            compile_cache_dir=compile_cache,
        )
    )
    config_json = env[ENV_CONFIG_JSON]
    timeout_s = request.timeout_s
    group = request.group
    group_doc: GroupFile | None = None
    if group is not None:
        group_doc = _add_group(request, group, config, mounts=mounts, env=env, base_dir=base_dir)
        timeout_s = group.timeout_s

    labels = _labels(request, owner_pid, owner_host)

    defaults = spec.container
    ipc_mode = settings.ipc_mode if settings.ipc_mode is not None else defaults.ipc_mode
    ulimits = dict(settings.ulimits if settings.ulimits is not None else defaults.ulimits)
    # With the host IPC namespace /dev/shm is the host's; Docker rejects a size then.
    shm_size = settings.shm_size if settings.shm_size is not None else defaults.shm_size
    if ipc_mode == "host":
        shm_size = None
    user = None
    if settings.run_as_host_user and request.host_uid is not None:
        user = f"{request.host_uid}:{request.host_gid if request.host_gid is not None else 0}"
    return ContainerSpec(
        image=request.image,
        command=settings.command if settings.command is not None else HARNESS_COMMAND,
        env=env,
        mounts=tuple(mounts),
        gpu_ids=tuple(int(g) for g in config.gpus) if settings.request_gpus else (),
        shm_size=shm_size,
        ipc_mode=ipc_mode,
        ulimits=ulimits,
        user=user,
        labels=labels,
        network_mode=settings.network_mode,
        mem_limit=settings.mem_limit,
        init=settings.init,
        timeout_s=timeout_s,
        stop_grace_s=settings.stop_grace_s,
        name=container_name(request, owner_pid),
        results_dir_host=str(request.run_dir),
        config_json=config_json,
        group_file=group_doc,
    )


def build_local_spec(
    request: RunRequest,
    *,
    python: str,
    base_env: Mapping[str, str],
    command: tuple[str, ...] | None = None,
    stop_grace_s: float = 10.0,
    hf_cache_dir: str | None = None,
    engine_cache_dir: str | None = None,
    compile_cache_dir: str | None = None,
) -> LocalSpec:
    """Build the subprocess description for ``request``: host paths, same env contract."""
    env = dict(base_env)
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)  # the host's own setting wins
    env.update(
        host_harness_env(
            request,
            python=python,
            hf_cache_dir=hf_cache_dir,
            engine_cache_dir=engine_cache_dir,
            compile_cache_dir=compile_cache_dir,
        )
    )
    group = request.group
    group_doc: GroupFile | None = None
    if group is not None:
        group_doc = group_file(
            group,
            results_dir_of={m.run_id: str(m.run_dir) for m in group.members},
            config_of={m.run_id: m.config for m in group.members},
        )
        env[ENV_GROUP_FILE] = group_doc.path_host
    return LocalSpec(
        command=command if command is not None else (python, "-m", "llenergymeasure_harness"),
        env=env,
        results_dir=str(request.run_dir),
        timeout_s=group.timeout_s if group is not None else request.timeout_s,
        stop_grace_s=stop_grace_s,
        group_file=group_doc,
    )
