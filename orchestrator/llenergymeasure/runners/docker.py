"""The Docker runner: one ephemeral container per experiment run, through the docker SDK.

Per run::

    create (never pulls) ─► start ─► logs → run log file (+ console)  ─► wait ≤ timeout
          │                  │                                            │ deadline / Ctrl-C
          │                  └─ start error → failed/start_failed         └─► stop (SIGTERM,
          │                                                                    grace, SIGKILL)
          └──────────────── always: inspect (OOMKilled, exit code) ─► classify ─► remove

docker-py facts this relies on (measured, see docs/runner.md): ``containers.run`` pulls a
missing image implicitly, so only ``create`` is used; ``wait(timeout=)`` raises a
``ConnectionError`` rather than a timeout, so the wait runs unbounded in a thread and the
deadline is kept here; without ``init`` Python as PID 1 ignores SIGTERM, so ``init=True``;
``auto_remove`` loses the logs of failures, so the container is removed explicitly; a failed
``start`` leaves the created container behind, so removal is in ``finally``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from llenergymeasure.errors import RunnerError
from llenergymeasure.runners.base import LogSink, LogWriter, RunOutcome, classify
from llenergymeasure.runners.spec import (
    LABEL_OWNER_HOST,
    LABEL_OWNER_PID,
    LABEL_STUDY,
    ContainerSettings,
    ContainerSpec,
    RunRequest,
    build_container_spec,
    host_compile_cache_dir,
)
from llenergymeasure_contract.registry import REGISTRY
from llenergymeasure_contract.timestamps import utc_iso

if TYPE_CHECKING:
    from llenergymeasure.config.study import RunnerSettings
    from llenergymeasure.runners.preflight import PreflightReport, StudyNeeds
    from llenergymeasure.study.manifest import RunRecord
    from llenergymeasure.study.session import StudySession

logger = logging.getLogger(__name__)

GPU_CAPABILITIES = [["gpu", "compute", "utility"]]


def connect(factory: Callable[[], Any] | None = None) -> Any:
    """A docker client that answered ``ping``; ``RunnerError`` (with a fix) otherwise."""
    try:
        import docker
        import requests
        from docker.errors import DockerException
    except ImportError as exc:  # a dependency, but hosts with a stripped install exist
        raise RunnerError(
            f"the docker Python package is not importable: {exc}",
            hint="pip install docker, or use --runner local",
        ) from exc

    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    fix = (
        "start Docker (or set DOCKER_HOST), or use --runner local on a host with the "
        "backends installed"
    )
    if factory is None and host.startswith("unix://"):
        path = host.removeprefix("unix://")
        if not os.path.exists(path):
            # Said without trying: docker-py leaks the socket of a failed connect (an unclosed
            # socket ResourceWarning later, somewhere unrelated).
            raise RunnerError(
                f"cannot reach the Docker daemon at {host}: no socket at {path}", hint=fix
            )
    client: Any = None
    try:
        client = factory() if factory is not None else docker.from_env(timeout=60)
        client.ping()
    except (DockerException, requests.exceptions.RequestException) as exc:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        _collect_leaked_socket()
        raise RunnerError(
            f"cannot reach the Docker daemon at {host}: {str(exc).splitlines()[0][:200]}",
            hint=fix,
        ) from exc
    return client


def _collect_leaked_socket() -> None:
    """Free the socket docker-py leaves behind after a failed connect, without a warning.

    ``UnixHTTPConnection.connect`` drops its socket unclosed when ``connect`` raises; the
    garbage collector would then warn (an error under pytest) in whatever code runs next.
    """
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def to_create_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    """Translate a :class:`ContainerSpec` into ``containers.create`` keyword arguments."""
    from docker.types import DeviceRequest, Mount, Ulimit

    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": list(spec.command) if spec.command is not None else None,
        "environment": dict(spec.env),
        "mounts": [
            Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
        "labels": dict(spec.labels),
        "network_mode": spec.network_mode,
        "init": spec.init,
        "name": spec.name,
        "detach": True,
    }
    if spec.gpu_ids:
        # By index, never count: docker-py's default count=0 means NVIDIA_VISIBLE_DEVICES=void.
        kwargs["device_requests"] = [
            DeviceRequest(device_ids=[str(i) for i in spec.gpu_ids], capabilities=GPU_CAPABILITIES)
        ]
    if spec.shm_size is not None:
        kwargs["shm_size"] = spec.shm_size
    if spec.ipc_mode is not None:
        kwargs["ipc_mode"] = spec.ipc_mode
    if spec.ulimits:
        kwargs["ulimits"] = [
            Ulimit(name=k, soft=v[0], hard=v[1])
            if isinstance(v, tuple)
            else Ulimit(name=k, soft=v, hard=v)
            for k, v in spec.ulimits.items()
        ]
    if spec.user is not None:
        kwargs["user"] = spec.user
    if spec.mem_limit is not None:
        kwargs["mem_limit"] = spec.mem_limit
        kwargs["memswap_limit"] = spec.mem_limit  # no swap: an OOM is an OOM, not a slowdown
    return kwargs


def explain_api_error(exc: Exception) -> str:
    """One line for a docker APIError, with the known causes named."""
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()[0][:400]
    lowered = text.lower()
    if "could not select device driver" in lowered:
        return (
            f"{text} (the NVIDIA Container Toolkit is not installed or dockerd does not see "
            "nvidia-container-runtime-hook)"
        )
    if "rlimit" in lowered:
        return f"{text} (the host does not allow this ulimit; set runner ulimits to {{}})"
    if "bind source path does not exist" in lowered:
        return f"{text} (a host path named in the config does not exist)"
    return text


class DockerRunner:
    """Runs each experiment in a fresh container of its backend's image."""

    name = "docker"
    uses_image: ClassVar[bool] = True
    adopts_jobs: ClassVar[bool] = False

    def __init__(
        self,
        settings: ContainerSettings | None = None,
        *,
        client: Any = None,
        client_factory: Callable[[], Any] | None = None,
        poll_s: float = 0.2,
    ) -> None:
        self.settings = settings or ContainerSettings()
        self._client = client
        self._factory = client_factory
        self._poll_s = poll_s

    @property
    def client(self) -> Any:
        """The docker client, connected on first use."""
        if self._client is None:
            self._client = connect(self._factory)
        return self._client

    def spec_for(self, request: RunRequest) -> ContainerSpec:
        """The container spec this runner would use for ``request``."""
        return build_container_spec(
            request,
            self.settings,
            base_dir=request.input_base_dir or os.getcwd(),
            owner_pid=os.getpid(),
            owner_host=socket.gethostname(),
        )

    @classmethod
    def ran_image(cls, settings: RunnerSettings) -> bool:
        """Always: every run ran in its planned image."""
        return True

    def preflight(self, needs: StudyNeeds) -> PreflightReport:
        """Daemon, images (pull policy), ulimits and GPUs per image; inputs, disk."""
        report = needs.check_host(
            needs.host_request("docker", ulimits=self._ulimits_by_image(needs)),
            client=self.client,
        )
        unset = [n for n in needs.env_passthrough if n not in os.environ]
        if unset:
            report.notes.append(
                f"docker.env_passthrough: {', '.join(unset)} not set in this environment; the "
                "containers run without it"
            )
        return report

    def _ulimits_by_image(self, needs: StudyNeeds) -> dict[str, dict[str, int | tuple[int, int]]]:
        """The ulimits each image's containers will get, from this runner's container spec."""
        out: dict[str, dict[str, int | tuple[int, int]]] = {}
        for e in needs.experiments:
            if e.image in out:
                continue
            probe = RunRequest(
                config=e.config,
                study_id="preflight",
                run_id="preflight",
                cycle=1,
                run_dir=Path("/nonexistent/preflight"),
                log_path=Path("/nonexistent/preflight.log"),
                image=e.image,
            )
            out[e.image] = dict(self.spec_for(probe).ulimits)
        return out

    def execute(self, todo: list[RunRecord], session: StudySession) -> None:
        """One container at a time, in plan order, with the thermal gaps."""
        session.run_each(todo)

    def cleanup_leftovers(self) -> list[str]:
        """Remove containers of this tool whose owning process is gone (earlier crashes)."""
        from docker.errors import DockerException, NotFound
        from requests.exceptions import RequestException

        removed: list[str] = []
        try:
            containers = self.client.containers.list(all=True, filters={"label": LABEL_STUDY})
        except (DockerException, RequestException) as exc:
            raise RunnerError(f"cannot list containers: {exc}") from exc
        host = socket.gethostname()
        for ct in containers:
            labels = ct.labels or {}
            pid_text = labels.get(LABEL_OWNER_PID)
            if labels.get(LABEL_OWNER_HOST, host) == host and pid_text and pid_text.isdigit():
                pid = int(pid_text)
                if pid != os.getpid() and _pid_alive(pid):
                    continue  # another live llem process owns it
            with contextlib.suppress(NotFound):
                ct.remove(force=True, v=True)
                removed.append(str(ct.name))
                logger.info("removed leftover container %s", ct.name)
        return removed

    def run(
        self,
        request: RunRequest,
        *,
        echo: LogSink | None = None,
        cancel: threading.Event | None = None,
    ) -> RunOutcome:
        """Run one experiment in a container; see the module docstring for the sequence."""
        from docker.errors import APIError, DockerException, ImageNotFound, NotFound
        from requests.exceptions import RequestException

        spec = self.spec_for(request)
        _prepare_host_dirs(request, self.settings)
        if spec.group_file is not None:
            spec.group_file.write()
        writer = LogWriter(request.log_path, echo)
        started_at = utc_iso()
        t0 = time.monotonic()
        ct: Any = None
        creating = False
        try:
            writer.note(f"run {request.run_id}: image {spec.image}, gpus {list(spec.gpu_ids)}")
            if not self.settings.request_gpus:
                writer.note("GPU requests are disabled for this study (CPU-only run)")
            creating = True
            try:
                ct = self.client.containers.create(**to_create_kwargs(spec))
            except ImageNotFound:
                return _start_failed(
                    request,
                    started_at,
                    t0,
                    writer,
                    f"image {spec.image} is not present locally; build it "
                    "(llem images build) or pull it (docker pull " + spec.image + ")",
                )
            except APIError as exc:
                return _start_failed(
                    request, started_at, t0, writer, f"create failed: {explain_api_error(exc)}"
                )
            try:
                ct.start()
            except APIError as exc:
                return _start_failed(
                    request,
                    started_at,
                    t0,
                    writer,
                    f"start failed: {explain_api_error(exc)}",
                    container_id=str(ct.id),
                )
            return self._supervise(
                ct=ct,
                spec=spec,
                request=request,
                writer=writer,
                started_at=started_at,
                t0=t0,
                cancel=cancel,
            )
        except (DockerException, RequestException) as exc:
            # docker-py raises requests' errors (not DockerException) when the socket goes
            # away mid-call: a daemon restart, a vanished socket, an API timeout.
            writer.note(f"docker error: {type(exc).__name__}: {exc}")
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise RunnerError(
                f"run {request.run_id}: lost contact with Docker: {first}",
                hint="check that the Docker daemon is running, then resume the study (its "
                "leftover container is removed then)",
            ) from exc
        finally:
            if ct is None and creating:
                # A signal (or a broken connection) inside ``create`` can leave a container
                # the daemon made but we never got a handle to: find it by its unique name.
                with contextlib.suppress(NotFound, DockerException, RequestException):
                    ct = self.client.containers.get(spec.name)
            if ct is not None:
                with contextlib.suppress(NotFound, DockerException, RequestException):
                    ct.remove(force=True, v=True)
            writer.close()

    def _supervise(
        self,
        *,
        ct: Any,
        spec: ContainerSpec,
        request: RunRequest,
        writer: LogWriter,
        started_at: str,
        t0: float,
        cancel: threading.Event | None,
    ) -> RunOutcome:
        done = threading.Event()
        waited: dict[str, Any] = {}

        def wait_for_exit() -> None:
            try:
                waited["status"] = ct.wait()
            except Exception as exc:  # reported to the supervising thread
                waited["error"] = exc
            finally:
                done.set()

        def pump_logs() -> None:
            try:
                for chunk in ct.logs(stream=True, follow=True, stdout=True, stderr=True):
                    writer.write(chunk)
            except Exception as exc:  # logs are best effort; the outcome does not depend on them
                logger.debug("log stream of %s ended: %s", spec.name, exc)

        waiter = threading.Thread(target=wait_for_exit, name=f"wait-{spec.name}", daemon=True)
        pumper = threading.Thread(target=pump_logs, name=f"logs-{spec.name}", daemon=True)
        waiter.start()
        pumper.start()
        deadline = t0 + spec.timeout_s if spec.timeout_s is not None else None
        timed_out = interrupted = False
        try:
            while not done.wait(self._poll_s):
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    writer.note(f"timeout of {spec.timeout_s:g} s reached; stopping")
                    break
                if cancel is not None and cancel.is_set():
                    interrupted = True
                    writer.note("cancelled; stopping")
                    break
        except KeyboardInterrupt:
            interrupted = True
            writer.note("interrupted (Ctrl-C); stopping the container")
        if timed_out or interrupted:
            self._stop(ct, spec, done, writer)
        wait_error = waited.get("error")
        if wait_error is not None and not (timed_out or interrupted):
            raise wait_error  # e.g. the daemon went away mid-run
        pumper.join(timeout=5)
        exit_code: int | None = None
        oom = False
        try:
            ct.reload()
            state = ct.attrs.get("State", {})
            oom = bool(state.get("OOMKilled", False))
            exit_code = int(state.get("ExitCode")) if state.get("ExitCode") is not None else None
        except Exception as exc:
            status = waited.get("status") or {}
            exit_code = status.get("StatusCode")
            writer.note(f"inspect failed after exit: {exc}")
        writer.note(f"container exited: exit_code={exit_code} oom_killed={oom}")
        return classify(
            results_dir=request.run_dir,
            exit_code=exit_code,
            oom_killed=oom,
            timed_out=timed_out,
            interrupted=interrupted,
            timeout_s=spec.timeout_s,
            started_at=started_at,
            duration_s=time.monotonic() - t0,
            container_id=str(ct.id),
            log_path=request.log_path,
        )

    def _stop(self, ct: Any, spec: ContainerSpec, done: threading.Event, writer: LogWriter) -> None:
        """SIGTERM, a grace period, then SIGKILL; a second Ctrl-C skips to SIGKILL."""
        try:
            try:
                ct.stop(timeout=max(1, round(spec.stop_grace_s)))
            except Exception as exc:
                writer.note(f"stop failed ({exc}); killing")
                with contextlib.suppress(Exception):
                    ct.kill()
            done.wait(spec.stop_grace_s + 10)
        except KeyboardInterrupt:
            writer.note("second Ctrl-C: killing the container")
            with contextlib.suppress(Exception):
                ct.kill()
            done.wait(10)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_host_dirs(request: RunRequest, settings: ContainerSettings) -> None:
    """Create the writable host dirs (Docker would create missing ones as root).

    When the orchestrator runs as root (``sudo llem``) but the container runs as another
    uid, the dirs the container writes are handed to that uid so it can write them.
    """
    request.run_dir.mkdir(parents=True, exist_ok=True)
    writable = [request.run_dir]
    if request.group is not None:  # every member's folder is mounted, and the group file
        for member in request.group.members[1:]:
            member.run_dir.mkdir(parents=True, exist_ok=True)
            writable.append(member.run_dir)
    uses_cache = REGISTRY.get(str(request.config.backend)).uses_engine_cache
    engines = settings.engine_cache_dir if uses_cache else None
    compiled = host_compile_cache_dir(request, settings)
    for d in (request.study_cache_dir, settings.hf_cache_dir, engines, compiled):
        if d is not None:
            Path(d).mkdir(parents=True, exist_ok=True)
    if request.study_cache_dir is not None:
        writable.append(request.study_cache_dir)
    if compiled is not None:
        writable.append(Path(compiled))
    uid = request.host_uid
    if os.geteuid() == 0 and uid not in (None, 0) and settings.run_as_host_user:
        gid = request.host_gid if request.host_gid is not None else -1
        for d in writable:
            with contextlib.suppress(OSError):
                os.chown(d, uid, gid)


def _start_failed(
    request: RunRequest,
    started_at: str,
    t0: float,
    writer: LogWriter,
    message: str,
    *,
    container_id: str | None = None,
) -> RunOutcome:
    writer.note(message)
    return RunOutcome(
        status="failed",
        failure_kind="start_failed",
        message=message,
        started_at=started_at,
        finished_at=utc_iso(),
        duration_s=time.monotonic() - t0,
        container_id=container_id,
    )
