"""Checks before the first experiment; every problem is collected and reported together.

Docker runner::

    daemon reachable ─► each image present (pull policy missing|always|never; never implicit)
                    ─► per image whose runs get ulimits: start ``true`` with those ulimits
                       (a host that refuses one is one problem with the fix, not N failed
                       runs)
                    ─► per image with GPU runs: run the image's own ``nvidia-smi`` with the
                       same device request (proves the NVIDIA runtime + those GPUs), and list
                       processes already on them
    host paths named in configs exist ─► free disk space under the results dir

Local runner: each backend's engine importable (``importlib.util.find_spec``, nothing is
imported), the harness importable, the GPUs the study names present and free (the host's
``nvidia-smi``; no ``nvidia-smi`` means no GPU, so a study naming GPUs stops here).

Everything found wrong raises one :class:`~llenergymeasure.errors.PreflightError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llenergymeasure.errors import ConfigError, PreflightError, RunnerError
from llenergymeasure.runners.docker import GPU_CAPABILITIES, explain_api_error
from llenergymeasure.runners.spec import LABEL_OWNER_PID, LABEL_STUDY
from llenergymeasure_contract.env import (
    LABEL_BACKEND,
    LABEL_CONTRACT_VERSION,
    check_contract_version,
)
from llenergymeasure_contract.registry import REGISTRY

if TYPE_CHECKING:
    from llenergymeasure.study.plan import PlannedExperiment

logger = logging.getLogger(__name__)

PullPolicy = Literal["missing", "always", "never"]

HARNESS_MODULE = "llenergymeasure_harness"


def backend_modules(backend: str) -> tuple[str, ...]:
    """Modules whose presence (not import) says ``backend`` can run locally (its registry
    entry's; none for a name the registry does not know)."""
    return REGISTRY.get(backend).modules if backend in REGISTRY else ()


DEFAULT_MIN_FREE_BYTES = 2 * 1024**3

_GPU_QUERY = "nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits"
_APPS_QUERY = (
    "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"
)
PROBE_SCRIPT = f"{_GPU_QUERY} && echo -- && {_APPS_QUERY}"


@dataclass(frozen=True)
class GpuSeen:
    """A GPU as nvidia-smi reported it."""

    index: int
    uuid: str
    name: str
    memory_total_mib: float | None = None


@dataclass(frozen=True)
class GpuProcess:
    """A compute process nvidia-smi saw on a GPU."""

    gpu_uuid: str
    pid: int | None
    used_memory_mib: float | None


def parse_probe_output(text: str) -> tuple[list[GpuSeen], list[GpuProcess]]:
    """Parse :data:`PROBE_SCRIPT` output (GPUs, ``--``, compute processes)."""
    gpus_part, _, apps_part = text.partition("\n--")
    gpus: list[GpuSeen] = []
    for line in gpus_part.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 3 and cols[0].isdigit():
            mem = _float(cols[3]) if len(cols) > 3 else None
            gpus.append(GpuSeen(int(cols[0]), cols[1], cols[2], mem))
    procs: list[GpuProcess] = []
    for line in apps_part.strip().splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) >= 2 and cols[0].startswith(("GPU-", "MIG-")):
            pid = int(cols[1]) if cols[1].isdigit() else None
            procs.append(GpuProcess(cols[0], pid, _float(cols[2]) if len(cols) > 2 else None))
    return gpus, procs


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class ImageFacts:
    """What the run records about an image (``LLEM_IMAGE_DIGEST`` / ``_LABELS_JSON``)."""

    name: str
    id: str | None = None
    digest: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightRequest:
    """What the study needs from this host."""

    runner: Literal["docker", "local"]
    results_dir: Path
    images: Mapping[str, frozenset[int]] = field(default_factory=dict)  # image -> GPU ids
    backends: frozenset[str] = frozenset()
    gpus: frozenset[int] = frozenset()  # local runner: all GPU ids named
    input_paths: tuple[str, ...] = ()
    pull_policy: PullPolicy = "missing"
    request_gpus: bool = True
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    #: image -> the ulimits its containers get (name -> value or (soft, hard)); empty: none.
    ulimits: Mapping[str, Mapping[str, int | tuple[int, int]]] = field(default_factory=dict)


@dataclass
class PreflightReport:
    """What preflight found (when it passed)."""

    images: dict[str, ImageFacts] = field(default_factory=dict)
    gpus: dict[str, list[GpuSeen]] = field(default_factory=dict)  # image (or "host") -> GPUs
    pulled: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class StudyNeeds:
    """What a study's runs need from the host: the input of every runner's ``preflight``.

    Attributes:
        experiments: The experiments about to run (a resumed study: those not completed).
        results_dir: Where the study folder is (free disk space is checked there).
        input_paths: Host paths the experiments read (model, tokenizer, dataset).
        pull_policy: How a missing image is obtained.
        request_gpus: Whether the runs get GPUs (off on CPU-only hosts).
        min_free_bytes: The free-disk threshold under ``results_dir``.
        env_passthrough: ``docker.env_passthrough`` names (a note names the unset ones).
        confirm: Asks the user a yes/no question (``None``: not interactive).
        assume_yes: Answer yes to questions (pull a missing image).
        resumed: A resumed study (its folder was proven when it started).
    """

    experiments: tuple[PlannedExperiment, ...]
    results_dir: Path
    input_paths: tuple[str, ...] = ()
    pull_policy: PullPolicy = "missing"
    request_gpus: bool = True
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    env_passthrough: tuple[str, ...] = ()
    confirm: Confirm | None = None
    assume_yes: bool = False
    resumed: bool = False

    def host_request(
        self,
        runner: Literal["docker", "local"],
        *,
        ulimits: Mapping[str, Mapping[str, int | tuple[int, int]]] | None = None,
    ) -> PreflightRequest:
        """The :class:`PreflightRequest` of these needs for the Docker or local runner."""
        images: dict[str, set[int]] = {}
        for e in self.experiments:
            images.setdefault(e.image, set()).update(e.config.gpus)
        return PreflightRequest(
            ulimits=ulimits or {},
            runner=runner,
            results_dir=self.results_dir,
            images={k: frozenset(v) for k, v in images.items()} if runner == "docker" else {},
            backends=frozenset(e.config.backend for e in self.experiments),
            gpus=frozenset(g for e in self.experiments for g in e.config.gpus),
            input_paths=self.input_paths,
            pull_policy=self.pull_policy,
            request_gpus=self.request_gpus,
            min_free_bytes=self.min_free_bytes,
        )

    def check_host(self, request: PreflightRequest, client: Any = None) -> PreflightReport:
        """:func:`run_preflight` of ``request`` with these needs' question and answer."""
        return run_preflight(
            request, client=client, confirm=self.confirm, assume_yes=self.assume_yes
        )


def run_preflight(
    request: PreflightRequest,
    *,
    client: Any = None,
    confirm: Confirm | None = None,
    assume_yes: bool = False,
    host_nvidia_smi: Callable[[], str | None] | None = None,
    find_spec: Callable[[str], Any] = importlib.util.find_spec,
) -> PreflightReport:
    """Check the host for ``request``; raise ``PreflightError`` listing every problem.

    Args:
        request: What the study needs.
        client: A connected docker client (Docker runner only).
        confirm: Asks the user a yes/no question (``None``: not interactive).
        assume_yes: Answer yes to questions (pull a missing image).
        host_nvidia_smi: Returns the host's :data:`PROBE_SCRIPT` output, or ``None`` when
            there is no ``nvidia-smi`` (local runner).
        find_spec: Module lookup without import (tests replace it).
    """
    problems: list[str] = []
    report = PreflightReport()
    if request.runner == "docker":
        if client is None:
            problems.append("the Docker runner needs a reachable Docker daemon")
        else:
            _check_images(
                request,
                client,
                confirm=confirm,
                assume_yes=assume_yes,
                report=report,
                problems=problems,
            )
            for image, limits in sorted(request.ulimits.items()):
                if limits and image in report.images:
                    _probe_ulimits(image, limits, client=client, problems=problems)
            if request.request_gpus:
                for image, gpu_ids in request.images.items():
                    if gpu_ids and image in report.images:
                        _probe_gpus(
                            image,
                            gpu_ids,
                            client=client,
                            request=request,
                            report=report,
                            problems=problems,
                        )
    else:
        _check_local(request, find_spec, host_nvidia_smi, report, problems)
    for path in request.input_paths:
        if not Path(path).expanduser().exists():
            problems.append(f"input path {path} (named in the study) does not exist")
    _check_disk(request, problems)
    if problems:
        raise PreflightError(problems)
    return report


def _image_facts(name: str, image: Any) -> ImageFacts:
    attrs = getattr(image, "attrs", {}) or {}
    digests = attrs.get("RepoDigests") or []
    labels = ((attrs.get("Config") or {}).get("Labels")) or {}
    return ImageFacts(
        name=name,
        id=attrs.get("Id"),
        digest=digests[0] if digests else attrs.get("Id"),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def _how_to_get(image: str) -> str:
    return (
        f"build it with `llem images build` (see docs/images.md) or pull it with "
        f"`docker pull {image}`, or set runner.images / --runner local"
    )


def _check_images(
    request: PreflightRequest,
    client: Any,
    *,
    confirm: Confirm | None,
    assume_yes: bool,
    report: PreflightReport,
    problems: list[str],
) -> None:
    from docker.errors import APIError, DockerException, ImageNotFound

    for image in sorted(request.images):
        present: Any = None
        try:
            present = client.images.get(image)
        except ImageNotFound:
            present = None
        except DockerException as exc:
            problems.append(f"cannot inspect image {image}: {exc}")
            continue
        want_pull = request.pull_policy == "always" or (
            present is None and request.pull_policy == "missing"
        )
        if present is None and request.pull_policy == "never":
            problems.append(
                f"image {image} is not present (pull_policy: never); {_how_to_get(image)}"
            )
            continue
        if want_pull and present is None and not assume_yes:
            question = f"Image {image} is not present locally. Pull it now?"
            if confirm is None:
                problems.append(
                    f"image {image} is not present; {_how_to_get(image)} (or rerun with --yes "
                    "to pull it)"
                )
                continue
            if not confirm(question):
                problems.append(f"image {image} is not present and pulling was declined")
                continue
        if want_pull:
            try:
                repo, _, tag = (
                    image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
                )
                present = client.images.pull(repo, tag=tag or None)
                report.pulled.append(image)
            except (APIError, DockerException) as exc:
                if present is None:
                    problems.append(f"pulling image {image} failed: {explain_api_error(exc)}")
                    continue
                report.notes.append(f"pull of {image} failed, using the local copy: {exc}")
        facts = _image_facts(image, present)
        if not _check_image_contract(facts, report, problems):
            continue
        report.images[image] = facts


def _check_image_contract(facts: ImageFacts, report: PreflightReport, problems: list[str]) -> bool:
    """False (with the problem listed) when an llenergymeasure image speaks another contract.

    An image built from our Dockerfiles carries the ``io.llenergymeasure.backend`` label; one
    that names no contract version predates versioning and is refused like a mismatch. An
    image without it (a user's own build) cannot be judged here: the harness inside checks
    the host's version when it starts, and the report notes that.
    """
    ours = LABEL_BACKEND in facts.labels or LABEL_CONTRACT_VERSION in facts.labels
    if not ours:
        report.notes.append(
            f"image {facts.name} carries no llenergymeasure labels; the harness checks the "
            "contract version when it starts"
        )
        return True
    try:
        check_contract_version(facts.labels.get(LABEL_CONTRACT_VERSION), side="image")
    except ConfigError as exc:
        problems.append(f"image {facts.name}: {exc.message}; fix: {exc.hint}")
        return False
    return True


def _probe_gpus(
    image: str,
    gpu_ids: frozenset[int],
    *,
    client: Any,
    request: PreflightRequest,
    report: PreflightReport,
    problems: list[str],
) -> None:
    """Run the image's nvidia-smi with the runs' device request (once per image)."""
    from docker.errors import APIError, DockerException
    from docker.types import DeviceRequest

    ids = sorted(gpu_ids)
    kwargs: dict[str, Any] = {
        "command": ["sh", "-c", PROBE_SCRIPT],
        "device_requests": [
            DeviceRequest(device_ids=[str(i) for i in ids], capabilities=GPU_CAPABILITIES)
        ],
        "labels": {LABEL_STUDY: "preflight", LABEL_OWNER_PID: str(os.getpid())},
        "network_mode": "none",
        "detach": True,
    }
    ct: Any = None
    try:
        ct = client.containers.create(image, **kwargs)
        ct.start()
        status = _wait(ct, 120.0)
        output = ct.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
    except APIError as exc:
        problems.append(f"GPUs {ids} are not usable from image {image}: {explain_api_error(exc)}")
        return
    except (DockerException, RunnerError) as exc:
        problems.append(f"GPU probe in image {image} failed: {exc}")
        return
    finally:
        if ct is not None:
            with contextlib.suppress(Exception):
                ct.remove(force=True)
    if status != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        problems.append(f"nvidia-smi in image {image} exited {status} for GPUs {ids}: {tail}")
        return
    gpus, procs = parse_probe_output(output)
    report.gpus[image] = gpus
    if len(gpus) != len(ids):
        problems.append(f"requested GPUs {ids} but nvidia-smi in {image} sees {len(gpus)}")
    _busy(gpus, procs, ids, problems)


def _probe_ulimits(
    image: str,
    limits: Mapping[str, int | tuple[int, int]],
    *,
    client: Any,
    problems: list[str],
) -> None:
    """Start ``true`` in ``image`` with the runs' ulimits; a refusal is one clear problem.

    Only a refusal of the limits themselves is reported here (``error setting rlimit``);
    anything else about starting the image is left to the run, which explains it.
    """
    from docker.errors import APIError, DockerException
    from docker.types import Ulimit
    from requests.exceptions import RequestException

    ulimits = [
        Ulimit(name=k, soft=v[0], hard=v[1])
        if isinstance(v, tuple)
        else Ulimit(name=k, soft=v, hard=v)
        for k, v in limits.items()
    ]
    ct: Any = None
    try:
        ct = client.containers.create(
            image,
            entrypoint=["true"],
            command=[],
            ulimits=ulimits,
            network_mode="none",
            labels={LABEL_STUDY: "preflight", LABEL_OWNER_PID: str(os.getpid())},
            detach=True,
        )
        ct.start()
        _wait(ct, 60.0)
    except APIError as exc:
        text = str(getattr(exc, "explanation", None) or exc)
        if "rlimit" in text.lower() or "ulimit" in text.lower():
            shown = ", ".join(
                f"{k}={v[0]}:{v[1]}" if isinstance(v, tuple) else f"{k}={v}"
                for k, v in limits.items()
            )
            problems.append(
                f"this host refuses the ulimits that containers of {image} would get ({shown}): "
                f"{text.strip().splitlines()[0][-160:]}. Fix: set the ulimits this host allows "
                "in the study, e.g. docker: {ulimits: {}} (none); raising memlock needs "
                "CAP_SYS_RESOURCE for dockerd"
            )
        else:
            logger.debug("ulimit probe of %s did not start: %s", image, text)
    except (DockerException, RequestException, RunnerError) as exc:
        logger.debug("ulimit probe of %s failed: %s", image, exc)
    finally:
        if ct is not None:
            with contextlib.suppress(Exception):
                ct.remove(force=True)


def _wait(ct: Any, timeout_s: float) -> int:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["status"] = ct.wait()
        except Exception as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        with contextlib.suppress(Exception):
            ct.kill()
        raise RunnerError(f"did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return int(box["status"].get("StatusCode", -1))


def _busy(
    gpus: list[GpuSeen], procs: list[GpuProcess], ids: Iterable[int], problems: list[str]
) -> None:
    by_uuid = {g.uuid: g for g in gpus}
    requested = list(ids)
    for proc in procs:
        gpu = by_uuid.get(proc.gpu_uuid)
        if gpu is None:
            continue
        host_index = requested[gpu.index] if gpu.index < len(requested) else gpu.index
        mem = f" using {proc.used_memory_mib:g} MiB" if proc.used_memory_mib else ""
        problems.append(
            f"GPU {host_index} ({gpu.name}, {gpu.uuid}) is busy: process {proc.pid}{mem}; "
            "measurements would include its energy. Stop it or pick other GPUs"
        )


def host_nvidia_smi() -> str | None:
    """The host's :data:`PROBE_SCRIPT` output, or ``None`` without ``nvidia-smi``."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        gpus = subprocess.run(
            _GPU_QUERY.split(), capture_output=True, text=True, timeout=30, check=True
        ).stdout
        apps = subprocess.run(
            _APPS_QUERY.split(), capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"error: {exc}"
    return f"{gpus}\n--\n{apps}"


def _check_local(
    request: PreflightRequest,
    find_spec: Callable[[str], Any],
    nvidia_smi: Callable[[], str | None] | None,
    report: PreflightReport,
    problems: list[str],
) -> None:
    def installed(module: str) -> bool:
        try:
            return find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    if not installed(HARNESS_MODULE):
        problems.append(
            f"the local runner needs the harness ({HARNESS_MODULE}) importable in this Python"
        )
    missing = {
        b: [m for m in backend_modules(b) if not installed(m)] for b in sorted(request.backends)
    }
    missing = {b: ms for b, ms in missing.items() if ms}
    if missing:
        names = ", ".join(f"{b} (no {', '.join(ms)})" for b, ms in missing.items())
        mixed = (
            " This study mixes backends; run it with --runner docker."
            if len(request.backends) > 1
            else ""
        )
        problems.append(
            f"the local runner cannot run these backends, not installed here: {names}.{mixed}"
        )
    if not (request.request_gpus and request.gpus):
        return
    text = (nvidia_smi or host_nvidia_smi)()
    if text is None:
        # Never a CPU result labelled as a GPU one: a study that names GPUs needs them.
        problems.append(
            f"the study asks for GPUs {sorted(request.gpus)}, but this host shows none "
            "(no nvidia-smi; GPUs found: none); run on the CPU with gpus: [] (pytorch, no "
            "energy), or on a host with GPUs"
        )
        return
    if text.startswith("error:"):
        problems.append(f"nvidia-smi failed: {text[6:].strip()}")
        return
    gpus, procs = parse_probe_output(text)
    report.gpus["host"] = gpus
    known = {g.index for g in gpus}
    absent = sorted(set(request.gpus) - known)
    if absent:
        found = ", ".join(f"{g.index} ({g.name})" for g in gpus) or "none"
        problems.append(
            f"GPUs {absent} do not exist on this host (GPUs found: {found}); list GPUs that "
            "exist, or gpus: [] to run on the CPU"
        )
    wanted = [g for g in gpus if g.index in request.gpus]
    by_uuid = {g.uuid for g in wanted}
    for proc in procs:
        if proc.gpu_uuid in by_uuid:
            gpu = next(g for g in wanted if g.uuid == proc.gpu_uuid)
            mem = f" using {proc.used_memory_mib:g} MiB" if proc.used_memory_mib else ""
            problems.append(
                f"GPU {gpu.index} ({gpu.name}) is busy: process {proc.pid}{mem}; stop it or "
                "pick other GPUs"
            )


def _check_disk(request: PreflightRequest, problems: list[str]) -> None:
    probe = request.results_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError as exc:
        problems.append(f"cannot check free space at {probe}: {exc}")
        return
    if free < request.min_free_bytes:
        problems.append(
            f"only {free / 1024**3:.1f} GiB free under {request.results_dir}; need at least "
            f"{request.min_free_bytes / 1024**3:.1f} GiB"
        )
    if not os.access(probe, os.W_OK):
        problems.append(f"results directory {request.results_dir} is not writable")
