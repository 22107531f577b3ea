"""Marker-based skips shared by the whole suite, and the Docker image fixtures.

Markers (declared in pyproject.toml) and what they need:

    docker    a Docker engine answering docker-py's ping
    torch     torch and transformers importable
    gpu       an NVIDIA GPU visible through NVML
    vllm      vllm importable
    tensorrt  tensorrt_llm importable
    slurm     a Slurm cluster answering sinfo with a node up (scripts/slurm-up.sh)

Tests that run ``llem`` as a user types it take ``llem_workdir`` (:class:`LlemWorkdir`): a fresh
working directory, the CPU study that tiny-model tests start from, the real CLI run there in a
subprocess with the defaults, and readers for what it wrote under ``./results``.

A test whose need is not met is skipped with the reason. With ``LLEM_REQUIRE_DOCKER=1``
(``.ci/run`` sets it) a ``docker`` test that would skip *fails* instead, so CI cannot go green
by silently skipping the integration tests; a skip caused by an unmet gpu/vllm/tensorrt marker
stays a skip (CI has none of those). Likewise a ``slurm`` test fails instead of skipping with
``LLEM_REQUIRE_SLURM=1``, or under ``CI=true`` when that variable is unset (``.ci/run`` starts a
one-node cluster; a CI job without one sets ``LLEM_REQUIRE_SLURM=0``).

Containers a test starts beside the ones ``llem`` starts (the image probe) are testcontainers
``DockerContainer`` objects from ``test_container``, labelled ``llem.test=<session>`` (the
host and pid of this pytest process) and waited for by a wait strategy. The testcontainers reaper
(Ryuk) is off, as its image cannot be pulled where the tests run offline: a session removes its
own containers by that label when it ends, and at its start the leftovers of sessions whose
process is gone; a concurrent session's containers are never touched.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
import yaml

from llenergymeasure.images import TEST_PYTORCH_IMAGE

if TYPE_CHECKING:
    from llenergymeasure.results import ExperimentResult
    from llenergymeasure.results.study import RunSummary, StudyResult

REQUIRE_DOCKER_ENV = "LLEM_REQUIRE_DOCKER"
REQUIRE_SLURM_ENV = "LLEM_REQUIRE_SLURM"
TEST_PYTORCH_IMAGE_ENV = "LLEM_TEST_PYTORCH_IMAGE"
TEST_CONTAINER_LABEL = "llem.test"
TEST_SESSION = f"{socket.gethostname()}:{os.getpid()}"
PROBE_OK = "llem-probe: ok"

# The reaper's image (testcontainers/ryuk) is never pulled: leftovers go by label instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

#: ``llem`` as the user's shell runs it, with this interpreter (and its PYTHONPATH).
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]

# Markers whose unmet need is an expected skip even when Docker is required.
_HARDWARE_MARKERS = ("gpu", "vllm", "tensorrt")


def docker_required() -> bool:
    """True when docker tests must fail rather than skip (LLEM_REQUIRE_DOCKER=1)."""
    return os.environ.get(REQUIRE_DOCKER_ENV, "") not in ("", "0", "false", "no")


@cache
def docker_unavailable_reason() -> str | None:
    """Why no Docker engine can be used, or None if docker-py can ping one."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed"
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        return f"no Docker socket at {host}; run `make docker-up`"
    try:
        client = docker.from_env(timeout=10)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        # docker-py leaves the failed socket for the garbage collector; collect it here, quietly,
        # so the ResourceWarning does not surface (as an error) in an unrelated test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return f"no reachable Docker engine ({type(exc).__name__}: {exc}); run `make docker-up`"
    return None


def slurm_required() -> bool:
    """True when slurm tests must fail rather than skip: LLEM_REQUIRE_SLURM=1, or CI=true
    unless LLEM_REQUIRE_SLURM says otherwise (a CI job that runs no integration tests)."""
    flag = os.environ.get(REQUIRE_SLURM_ENV)
    if flag is None:
        flag = os.environ.get("CI", "")
    return flag not in ("", "0", "false", "no")


@cache
def slurm_unavailable_reason() -> str | None:
    """Why no Slurm cluster can be used, or None if sinfo shows a responding node."""
    import shutil
    import subprocess

    absent = [c for c in ("sbatch", "squeue", "scancel", "sinfo") if shutil.which(c) is None]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing); run scripts/slurm-up.sh"
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--responding", "-o", "%t"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        why = proc.stderr.strip() or f"node states {states}"
        return f"no Slurm node up ({why}); run scripts/slurm-up.sh"
    return None


@cache
def _missing_modules(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


@cache
def gpu_unavailable_reason() -> str | None:
    """Why no NVIDIA GPU can be used, or None if NVML reports at least one."""
    if _missing_modules("pynvml"):
        return "nvidia-ml-py (pynvml) is not installed"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:
        return f"no NVIDIA driver/NVML ({type(exc).__name__}: {exc})"
    return None if count > 0 else "NVML reports no GPU"


def _unmet(marker: str) -> str | None:
    if marker == "docker":
        return docker_unavailable_reason()
    if marker == "gpu":
        return gpu_unavailable_reason()
    if marker == "slurm":
        return slurm_unavailable_reason()
    modules = {"torch": ("torch", "transformers"), "vllm": ("vllm",), "tensorrt": ("tensorrt_llm",)}
    if marker in modules and (missing := _missing_modules(*modules[marker])):
        return f"needs {' and '.join(missing)} (not installed)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip (or, for docker under LLEM_REQUIRE_DOCKER=1, fail) tests whose marker is unmet."""
    for item in items:
        for marker in ("gpu", "vllm", "tensorrt", "torch", "docker", "slurm"):
            if item.get_closest_marker(marker) is None:
                continue
            reason = _unmet(marker)
            if reason is None:
                continue
            if marker == "slurm" and slurm_required():
                item.user_properties.append(("llem_slurm_required", reason))
                break
            if marker in _HARDWARE_MARKERS:
                item.user_properties.append(("llem_expected_skip", marker))
            item.add_marker(pytest.mark.skip(reason=f"[{marker}] {reason}"))
            break


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under CI=true or LLEM_REQUIRE_SLURM=1, a slurm test without a cluster fails."""
    for name, value in item.user_properties:
        if name == "llem_slurm_required":
            pytest.fail(f"{REQUIRE_SLURM_ENV}=1 or CI=true but {value}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under LLEM_REQUIRE_DOCKER=1, turn the skip of a docker test into a failure."""
    outcome: Any = yield
    report: pytest.TestReport = outcome.get_result()
    if not (report.skipped and docker_required() and item.get_closest_marker("docker")):
        return
    if any(name == "llem_expected_skip" for name, _ in item.user_properties):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_DOCKER_ENV}=1 but this docker test would skip: {reason}"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A pinged docker-py client (skips, or fails under LLEM_REQUIRE_DOCKER=1, without one)."""
    reason = docker_unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)
    import docker

    client = docker.from_env(timeout=120)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def skip_or_fail() -> Callable[[str], None]:
    """Skip with a reason, or fail under LLEM_REQUIRE_DOCKER=1 (for docker prerequisites)."""
    return _skip_or_fail


@pytest.fixture(scope="session")
def local_image(docker_client: Any) -> Callable[[str], str]:
    """``local_image(tag)`` returns the tag if the image is present, else skips (or fails)."""
    import docker.errors

    def need(tag: str) -> str:
        try:
            docker_client.images.get(tag)
        except docker.errors.ImageNotFound:
            _skip_or_fail(f"image {tag} is not built; run `make test-images`")
        return tag

    return need


def labelled_containers(client: Any, session: str | None = TEST_SESSION) -> list[Any]:
    """Containers carrying the test label: this session's, or every session's with None."""
    label = TEST_CONTAINER_LABEL if session is None else f"{TEST_CONTAINER_LABEL}={session}"
    return list(client.containers.list(all=True, filters={"label": label}))


def _session_gone(session: str) -> bool:
    """True when ``session`` (host:pid) was a pytest process on this host that has ended."""
    host, _, pid = session.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another host's session (a shared engine): not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _remove_leftovers(client: Any) -> None:
    """Remove the containers of ended sessions on this host; a live session's are kept."""
    for container in labelled_containers(client, session=None):
        session = container.labels.get(TEST_CONTAINER_LABEL, "")
        if session != TEST_SESSION and _session_gone(session):
            container.remove(force=True, v=True)


def _remove_own(client: Any) -> None:
    for container in labelled_containers(client):
        container.remove(force=True, v=True)


@pytest.fixture(scope="session")
def test_container(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """``test_container(image, command, **docker_kwargs)``: an unstarted testcontainers
    ``DockerContainer`` of a local image, labelled ``llem.test=<session>``, without a network
    unless ``network_mode`` says otherwise (the engine runs with ``--bridge=none``); chain
    ``.waiting_for(...)`` and use it as a context manager. Ended sessions' leftovers are removed
    at the start, this session's containers at the end."""
    from testcontainers.core.container import DockerContainer

    def make(image: str, command: list[str], **kwargs: Any) -> DockerContainer:
        kwargs.setdefault("network_mode", "none")
        labels = {**kwargs.pop("labels", {}), TEST_CONTAINER_LABEL: TEST_SESSION}
        return DockerContainer(image, command=command, labels=labels, **kwargs)

    _remove_leftovers(docker_client)
    try:
        yield make
    finally:
        _remove_own(docker_client)


@pytest.fixture(scope="session")
def require_in_image(test_container: Callable[..., Any]) -> Callable[[str, str, str], None]:
    """``require_in_image(image, modules, feature)``: skip when ``python3 -c "import modules"``
    fails in the image (a local image built before ``feature``; rebuild it), and fail instead
    under CI or ``LLEM_REQUIRE_DOCKER=1``, where the images are built from this checkout."""
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    def need(image: str, modules: str, feature: str) -> None:
        probe = test_container(
            image, ["python3", "-c", f"import {modules}; print({PROBE_OK!r})"]
        ).waiting_for(LogMessageWaitStrategy(PROBE_OK).with_startup_timeout(120))
        try:
            with probe:
                pass
        except RuntimeError:  # the container exited without the line: an import failed
            reason = f"{image} predates {feature}; rebuild it with `make test-images`"
            if os.environ.get("CI") == "true":
                pytest.fail(reason, pytrace=False)
            _skip_or_fail(reason)

    return need


@pytest.fixture(scope="session")
def pytorch_test_image(local_image: Callable[[str], str]) -> str:
    """Tag of the offline-built pytorch image (``make test-images``); env overrides the tag."""
    return local_image(os.environ.get(TEST_PYTORCH_IMAGE_ENV) or TEST_PYTORCH_IMAGE)


def _skip_or_fail(reason: str) -> None:
    if docker_required():
        pytest.fail(f"{REQUIRE_DOCKER_ENV}=1: {reason}", pytrace=False)
    pytest.skip(reason)


#: The study a tiny-model test starts from: the built-in tiny architecture with random weights
#: on the CPU (no GPU asked for), one warmup batch, no idle baseline, no gaps, and a container
#: with no network and no limits the test engine may refuse.
CPU_STUDY: dict[str, Any] = {
    "name": "study",
    "model": "tiny-llama",
    "load_format": "dummy",
    "precision": "float32",
    "n_prompts": 8,
    "max_input_tokens": 16,
    "max_output_tokens": 8,
    "warmup": {"n_batches": 1},
    "baseline": {"enabled": False},
    "gpus": [],
    "execution": {"config_gap_s": 0, "cycle_gap_s": 0},
    "docker": {"network_mode": "none", "ulimits": {}, "ipc_mode": None, "shm_size": "1g"},
}


class LlemWorkdir:
    """A user's working directory and the ``llem`` commands typed there.

    ``llem`` is the real CLI in a subprocess whose working directory is :attr:`cwd`, with the
    defaults: results in ``./results``, no user config (``LLEM_USER_CONFIG`` names a file that
    does not exist) and no GPU request (``LLEM_NO_GPU=1``: a CPU host). Add to :attr:`env` for
    every later command, or pass variables to one :meth:`run` or :meth:`start`.
    """

    #: What :meth:`write_study` merges its fields over (a subclass may start elsewhere).
    base_study: ClassVar[dict[str, Any]] = CPU_STUDY

    def __init__(
        self, cwd: Path, image: str, require_in_image: Callable[[str, str, str], None] | None
    ) -> None:
        self.cwd = cwd
        self.image = image
        self._require_in_image = require_in_image
        self.env = {
            **os.environ,
            "LLEM_NO_GPU": "1",  # CPU-only host: containers get no GPU request
            "LLEM_USER_CONFIG": str(cwd / "no-user-config.yaml"),
        }

    def require_in_image(self, modules: str, feature: str) -> None:
        """Skip (or fail, see ``require_in_image``) unless the image imports ``modules``."""
        assert self._require_in_image is not None, "only docker-marked tests probe the image"
        self._require_in_image(self.image, modules, feature)

    def write_study(self, file_name: str = "study.yaml", /, **fields: Any) -> Path:
        """``file_name`` in the working directory: :attr:`base_study` with the test image and
        ``fields`` (a mapping merges one level deep into the base's mapping of that key)."""
        data = copy.deepcopy(self.base_study)
        data["images"] = {"pytorch": self.image}
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.cwd / file_name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def run(
        self, *args: str, timeout_s: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``llem ARGS`` in the working directory, to the end."""
        return subprocess.run(
            [*LLEM, *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        """``llem ARGS`` in the background (to signal it, or race a second one); stderr is
        merged into stdout."""
        return subprocess.Popen(
            [*LLEM, *args],
            cwd=self.cwd,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for(self, proc: subprocess.Popen[str], what: str, cond: Any, timeout_s: float) -> Any:
        """Poll ``cond()`` until truthy while ``proc`` runs; fail with its output otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                value = cond()
            except (OSError, ValueError, KeyError, IndexError):
                value = None
            if value:
                return value
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        out = proc.communicate(timeout=60)[0] if proc.poll() is not None else "(still running)"
        proc.kill()
        raise AssertionError(f"never saw {what} (llem exited {proc.returncode}): {out}")

    # ---------------------------------------------------------------- what the user sees

    def study_dir(self) -> Path:
        """The one study folder under ./results."""
        (found,) = [p.parent for p in (self.cwd / "results").glob("*/manifest.json")]
        return found

    def manifest(self) -> dict[str, Any]:
        """manifest.json as the user reads it."""
        return dict(json.loads((self.study_dir() / "manifest.json").read_text()))

    def run_states(self) -> list[str]:
        """Each run's state, in plan order."""
        return [r["state"] for r in self.manifest()["runs"]]

    def running_run(self, index: int) -> str | None:
        """The run id of run ``index`` (1-based) once the manifest says it is running."""
        run = self.manifest()["runs"][index - 1]
        return str(run["run_id"]) if run["state"] == "running" else None

    def result_files(self) -> list[Path]:
        """Every result.json under ./results (a run measured twice would show twice)."""
        return sorted((self.cwd / "results").glob("*/runs/*/result.json"))

    def study_result(self) -> StudyResult:
        """The study's result (study.json), loaded as the results commands load it."""
        from llenergymeasure.results.study import StudyResult

        return StudyResult.load(self.study_dir())

    def run_result(self, run: RunSummary) -> ExperimentResult:
        """The result.json of one run of :meth:`study_result`."""
        from llenergymeasure.results import ExperimentResult

        assert run.result_path is not None, run
        return ExperimentResult.load(self.study_dir() / run.result_path)

    def run_requests(self, run: RunSummary) -> dict[str, list[Any]]:
        """The requests.parquet beside a run's result.json, column -> values."""
        import pyarrow.parquet as pq

        assert run.result_path is not None, run
        path = self.study_dir() / run.result_path.replace("result.json", "requests.parquet")
        return dict(pq.read_table(path).to_pydict())


def workdir_image(
    request: pytest.FixtureRequest,
) -> tuple[str, Callable[[str, str, str], None] | None]:
    """The test image and the image probe for a docker-marked test; the default tag and no
    probe otherwise (the engine is then never asked)."""
    if request.node.get_closest_marker("docker") is None:
        return TEST_PYTORCH_IMAGE, None
    return request.getfixturevalue("pytorch_test_image"), request.getfixturevalue(
        "require_in_image"
    )


@pytest.fixture
def llem_workdir(tmp_path: Path, request: pytest.FixtureRequest) -> LlemWorkdir:
    """A fresh working directory for ``llem``; in a docker-marked test, with the CPU pytorch
    test image (``pytorch_test_image``) and its ``require_in_image`` probe."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    image, need = workdir_image(request)
    return LlemWorkdir(cwd, image, need)
