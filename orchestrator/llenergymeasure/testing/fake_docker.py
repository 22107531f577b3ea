"""An in-memory stand-in for ``docker.DockerClient``, for unit tests of the runners and studies.

It implements the slice of docker-py the runner uses (``ping``, ``info``, ``version``,
``images.get/pull/list``, ``containers.create/list/get``, and on containers ``start``, ``wait``,
``logs``, ``stop``, ``kill``, ``reload``, ``remove``) and raises docker-py's own exception
classes, so the error translation is tested too. What a container "does" is scripted with a
:class:`FakeHarness`: which files it writes into the bind-mounted results directory, what it
logs, how it exits, whether it hangs until stopped or is OOM-killed.

Example::

    client = FakeDockerClient(images={"llem/pytorch:test"}, harness=FakeHarness(exit_code=3))
    runner = DockerRunner(settings, client=client)
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound

from llenergymeasure_contract._version import CONTRACT_VERSION
from llenergymeasure_contract.env import LABEL_CONTRACT_VERSION
from llenergymeasure_contract.files import ERROR_FILE, RESULT_FILE

ResultWriter = Callable[[Path, Mapping[str, str]], None]


@dataclass
class FakeHarness:
    """The scripted behaviour of one fake container.

    Attributes:
        exit_code: Status when it finishes by itself.
        logs: Bytes it prints.
        write: Called with (host results dir, env) when it runs; writes result/error files.
        hang: Runs until stopped/killed (then exits 143 on stop, 137 on kill).
        oom_killed: Ends with 137 and ``State.OOMKilled``.
        start_error: ``start`` raises ``APIError`` with this explanation.
        nvidia_smi_output: What a command starting with ``nvidia-smi``/``sh`` prints (preflight).
    """

    exit_code: int = 0
    logs: bytes = b"fake harness\n"
    write: ResultWriter | None = None
    hang: bool = False
    oom_killed: bool = False
    start_error: str | None = None
    nvidia_smi_output: bytes | None = None


HarnessPicker = Callable[[dict[str, Any]], FakeHarness]


@dataclass
class FakeContainer:
    """A fake container created by :class:`FakeDockerClient`."""

    client: FakeDockerClient
    id: str
    name: str
    kwargs: dict[str, Any]
    harness: FakeHarness
    status: str = "created"
    exit_code: int | None = None
    oom: bool = False
    removed: bool = False
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.kwargs.get("labels") or {})

    @property
    def attrs(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "Name": self.name,
            "State": {
                "Status": self.status,
                "ExitCode": self.exit_code if self.exit_code is not None else 0,
                "OOMKilled": self.oom,
            },
            "Config": {"Labels": self.labels},
        }

    def _results_dir(self) -> Path | None:
        for m in self.kwargs.get("mounts") or []:
            if m.get("Target") == "/llem/results":
                return Path(m["Source"])
        return None

    def start(self) -> None:
        self._check()
        if self.harness.start_error is not None:
            raise APIError(self.harness.start_error, explanation=self.harness.start_error)
        self.status = "running"
        self.client.started.append(self)
        if self.harness.write is not None:
            rdir = self._results_dir()
            if rdir is not None:
                self.harness.write(rdir, self.kwargs.get("environment") or {})
        if self.harness.hang:
            return
        self._finish(137 if self.harness.oom_killed else self.harness.exit_code)
        self.oom = self.harness.oom_killed

    def _finish(self, code: int) -> None:
        if self._done.is_set():
            return
        self.exit_code = code
        self.status = "exited"
        self._done.set()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        self._check()
        self._done.wait(timeout)
        return {"StatusCode": self.exit_code, "Error": None}

    def logs(self, **kwargs: Any) -> Any:
        self._check()
        data = self._log_bytes()
        if kwargs.get("stream"):
            return self._stream(data, follow=bool(kwargs.get("follow")))
        return data

    def _log_bytes(self) -> bytes:
        cmd = self.kwargs.get("command") or []
        if cmd and self.harness.nvidia_smi_output is not None:
            return self.harness.nvidia_smi_output
        return self.harness.logs

    def _stream(self, data: bytes, *, follow: bool) -> Iterator[bytes]:
        yield from data.splitlines(keepends=True)
        if follow:
            self._done.wait()

    def stop(self, timeout: int = 10) -> None:
        self._check()
        self.client.stopped.append(self.name)
        self._finish(143)

    def kill(self, signal: str | int = "SIGKILL") -> None:
        self._check()
        self._finish(137)

    def reload(self) -> None:
        self._check()

    def remove(self, force: bool = False, v: bool = False) -> None:
        self._check()
        if self.status == "running" and not force:
            raise APIError("container is running")
        self._finish(137)
        self.removed = True
        self.client.containers._by_id.pop(self.id, None)
        self.client.removed.append(self.name)

    def _check(self) -> None:
        if self.removed:
            raise NotFound(f"No such container: {self.id}")


class _Containers:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client
        self._by_id: dict[str, FakeContainer] = {}
        self._ids = itertools.count(1)

    def create(self, image: str, command: Any = None, **kwargs: Any) -> FakeContainer:
        if image not in self._client.images.present:
            raise ImageNotFound(f"No such image: {image}")
        kwargs = {**kwargs, "image": image, "command": command}
        kwargs["mounts"] = [dict(m) for m in kwargs.get("mounts") or []]
        name = kwargs.get("name") or f"fake-{next(self._ids)}"
        if any(c.name == name for c in self._by_id.values()):
            raise APIError(f"Conflict. The container name {name} is already in use")
        cid = f"{next(self._ids):064x}"
        ct = FakeContainer(self._client, cid, name, kwargs, self._client.pick(kwargs))
        self._by_id[cid] = ct
        self._client.created.append(ct)
        return ct

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[FakeContainer]:
        out = list(self._by_id.values())
        label = (filters or {}).get("label")
        if isinstance(label, str):
            key, _, value = label.partition("=")
            out = [c for c in out if key in c.labels and (not value or c.labels[key] == value)]
        if not all:
            out = [c for c in out if c.status == "running"]
        return out

    def get(self, cid: str) -> FakeContainer:
        for c in self._by_id.values():
            if cid in (c.id, c.name):
                return c
        raise NotFound(f"No such container: {cid}")


@dataclass
class _Image:
    tags: list[str]
    id: str
    labels: dict[str, str]

    @property
    def attrs(self) -> dict[str, Any]:
        return {
            "Id": self.id,
            "RepoTags": self.tags,
            "RepoDigests": [],
            "Size": 1,
            "Config": {"Labels": self.labels},
        }


class _Images:
    def __init__(
        self,
        present: set[str],
        pullable: set[str],
        labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.present = set(present)
        self.pullable = set(pullable)
        self.labels = {k: dict(v) for k, v in (labels or {}).items()}
        self.pulled: list[str] = []

    def get(self, name: str) -> _Image:
        if name not in self.present:
            raise ImageNotFound(f"No such image: {name}")
        # Like a real image built from this checkout: it speaks this contract version.
        labels = self.labels.get(
            name, {"llem.fake": "1", LABEL_CONTRACT_VERSION: str(CONTRACT_VERSION)}
        )
        return _Image([name], f"sha256:{abs(hash(name)):064x}"[:71], dict(labels))

    def pull(self, repository: str, tag: str | None = None, **kwargs: Any) -> _Image:
        name = f"{repository}:{tag}" if tag else repository
        if name not in self.pullable:
            raise APIError(f"pull access denied for {name}")
        self.present.add(name)
        self.pulled.append(name)
        return self.get(name)

    def list(self, name: str | None = None, **kwargs: Any) -> list[_Image]:
        return [self.get(n) for n in sorted(self.present) if name is None or n.startswith(name)]


class FakeDockerClient:
    """The fake client. ``harness`` is a :class:`FakeHarness` or a function choosing one;
    ``image_labels`` replaces the labels of the named images (default: this contract's)."""

    def __init__(
        self,
        *,
        images: set[str] | None = None,
        pullable: set[str] | None = None,
        harness: FakeHarness | HarnessPicker | None = None,
        reachable: bool = True,
        runtimes: Mapping[str, Any] | None = None,
        image_labels: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.images = _Images(images or set(), pullable or set(), image_labels)
        self.containers = _Containers(self)
        self._harness = harness or FakeHarness()
        self.reachable = reachable
        self.runtimes = dict(runtimes or {"runc": {}})
        self.created: list[FakeContainer] = []
        self.started: list[FakeContainer] = []
        self.stopped: list[str] = []
        self.removed: list[str] = []

    def pick(self, kwargs: dict[str, Any]) -> FakeHarness:
        h = self._harness
        return h if isinstance(h, FakeHarness) else h(kwargs)

    def ping(self) -> bool:
        if not self.reachable:
            from docker.errors import DockerException

            raise DockerException("Error while fetching server API version: connection refused")
        return True

    def version(self) -> dict[str, Any]:
        self.ping()
        return {"Version": "99.0-fake", "ApiVersion": "1.41"}

    def info(self) -> dict[str, Any]:
        self.ping()
        return {"ServerVersion": "99.0-fake", "Runtimes": self.runtimes, "DockerRootDir": "/"}

    def close(self) -> None:
        """Nothing to close."""


def make_fake_result(
    env: Mapping[str, str], *, output_tokens: int = 1000, duration_s: float = 2.0
) -> Any:
    """A valid ``ExperimentResult`` for the run described by a harness environment."""
    from llenergymeasure.contract import HarnessEnv
    from llenergymeasure_contract.results import (
        ComputeMetrics,
        EfficiencyMetrics,
        EnergyMeasurement,
        EnvironmentSnapshot,
        ExperimentResult,
        LatencyMetrics,
        ThroughputMetrics,
        Timings,
    )

    henv = HarnessEnv.from_env(env)
    cfg = henv.config
    n = cfg.n_prompts
    energy_j = 0.5 * output_tokens
    return ExperimentResult(
        run_id=henv.run_id,
        config_hash=henv.config_hash or cfg.config_hash,  # the host's, as the harness does
        cycle=henv.cycle,
        study_id=henv.study_id,
        config=cfg,
        timings=Timings(
            started_at="2026-11-22T00:00:00Z", ended_at="2026-11-22T00:00:02Z", measure_s=duration_s
        ),
        energy=EnergyMeasurement(
            sampler="null", gpu_energy_j=energy_j, avg_power_w=energy_j / duration_s
        ),
        throughput=ThroughputMetrics(
            n_requests=n,
            input_tokens=n * 16,
            output_tokens=output_tokens,
            total_tokens=n * 16 + output_tokens,
            duration_s=duration_s,
            output_tokens_per_s=output_tokens / duration_s,
            total_tokens_per_s=(n * 16 + output_tokens) / duration_s,
            requests_per_s=n / duration_s,
        ),
        efficiency=EfficiencyMetrics(j_per_output_token=energy_j / output_tokens),
        latency=LatencyMetrics(),
        compute=ComputeMetrics(),
        environment=EnvironmentSnapshot(hostname="fake", backend=cfg.backend),
    )


def write_fake_result(results_dir: Path, env: Mapping[str, str]) -> None:
    """A :data:`ResultWriter` that writes a valid ``result.json`` for the run."""
    make_fake_result(env).write(results_dir / RESULT_FILE)


def write_fake_error(results_dir: Path, env: Mapping[str, str]) -> None:
    """A :data:`ResultWriter` that writes an ``error.json`` as the harness does on failure."""
    from llenergymeasure_contract.results import HarnessErrorRecord

    HarnessErrorRecord(
        run_id=env.get("LLEM_RUN_ID"),
        phase="load",
        error_class="FakeLoadError",
        message="the fake model could not be loaded",
        occurred_at="2026-11-22T00:00:00Z",
    ).write(results_dir / ERROR_FILE)
