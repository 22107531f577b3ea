"""The local runner: the harness as a subprocess on this host, for hosts without Docker.

Same environment and results-directory contract as the containers (host paths, no rewriting),
``python -m llenergymeasure_harness`` with this interpreter. The child runs in its own session
so a terminal Ctrl-C reaches only the orchestrator, which forwards it (SIGINT), waits the grace
period, then sends SIGTERM and finally SIGKILL. The timeout goes straight to SIGTERM → SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, ClassVar

from llenergymeasure.errors import RunnerError
from llenergymeasure.runners.base import LogSink, LogWriter, RunOutcome, classify
from llenergymeasure.runners.spec import LocalSpec, RunRequest, build_local_spec
from llenergymeasure_contract.timestamps import utc_iso

if TYPE_CHECKING:
    from llenergymeasure.config.study import RunnerSettings
    from llenergymeasure.runners.preflight import PreflightReport, StudyNeeds
    from llenergymeasure.study.manifest import RunRecord
    from llenergymeasure.study.session import StudySession


class LocalRunner:
    """Runs each experiment as a harness subprocess of this Python interpreter."""

    name = "local"
    uses_image: ClassVar[bool] = False
    adopts_jobs: ClassVar[bool] = False

    def __init__(
        self,
        *,
        python: str | None = None,
        command: tuple[str, ...] | None = None,
        base_env: Mapping[str, str] | None = None,
        stop_grace_s: float = 10.0,
        hf_cache_dir: str | None = None,
        engine_cache_dir: str | None = None,
        compile_cache_dir: str | None = None,
        poll_s: float = 0.1,
    ) -> None:
        self.python = python or sys.executable
        self.command = command
        self.base_env = dict(base_env) if base_env is not None else None
        self.stop_grace_s = stop_grace_s
        self.hf_cache_dir = hf_cache_dir
        self.engine_cache_dir = engine_cache_dir
        self.compile_cache_dir = compile_cache_dir
        self._poll_s = poll_s

    def spec_for(self, request: RunRequest) -> LocalSpec:
        """The subprocess spec this runner would use for ``request``."""
        return build_local_spec(
            request,
            python=self.python,
            base_env=self.base_env if self.base_env is not None else dict(os.environ),
            command=self.command,
            stop_grace_s=self.stop_grace_s,
            hf_cache_dir=self.hf_cache_dir,
            engine_cache_dir=self.engine_cache_dir,
            compile_cache_dir=self.compile_cache_dir,
        )

    def cleanup_leftovers(self) -> list[str]:
        """Nothing to clean: child processes die with their session or are reaped here."""
        return []

    @classmethod
    def ran_image(cls, settings: RunnerSettings) -> bool:
        """Never: the runs ran on this host, not in the planned image."""
        return False

    def preflight(self, needs: StudyNeeds) -> PreflightReport:
        """Each backend's engine and the harness importable here; inputs, GPUs, disk."""
        return needs.check_host(needs.host_request("local"))

    def execute(self, todo: list[RunRecord], session: StudySession) -> None:
        """One run at a time, in plan order, with the thermal gaps."""
        session.run_each(todo)

    def run(
        self,
        request: RunRequest,
        *,
        echo: LogSink | None = None,
        cancel: threading.Event | None = None,
    ) -> RunOutcome:
        """Run the harness subprocess for ``request`` and classify how it ended."""
        spec = self.spec_for(request)
        request.run_dir.mkdir(parents=True, exist_ok=True)
        if request.study_cache_dir is not None:
            request.study_cache_dir.mkdir(parents=True, exist_ok=True)
        if spec.group_file is not None:
            spec.group_file.write()
        writer = LogWriter(request.log_path, echo)
        started_at = utc_iso()
        t0 = time.monotonic()
        try:
            writer.note(f"run {request.run_id}: {' '.join(spec.command)}")
            try:
                proc = subprocess.Popen(
                    list(spec.command),
                    env=dict(spec.env),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RunnerError(f"cannot start {spec.command[0]}: {exc}") from exc
            assert proc.stdout is not None
            pumper = threading.Thread(
                target=_pump, args=(proc.stdout, writer), name="logs-local", daemon=True
            )
            pumper.start()
            deadline = t0 + spec.timeout_s if spec.timeout_s is not None else None
            timed_out = interrupted = False
            try:
                while proc.poll() is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        timed_out = True
                        writer.note(f"timeout of {spec.timeout_s:g} s reached; stopping")
                        _terminate(proc, spec.stop_grace_s)
                        break
                    if cancel is not None and cancel.is_set():
                        interrupted = True
                        writer.note("cancelled; stopping")
                        _interrupt(proc, spec.stop_grace_s)
                        break
                    time.sleep(self._poll_s)
            except KeyboardInterrupt:
                interrupted = True
                writer.note("interrupted (Ctrl-C); forwarding SIGINT to the harness")
                _interrupt(proc, spec.stop_grace_s)
            exit_code = proc.wait()
            pumper.join(timeout=5)
            proc.stdout.close()
            writer.note(f"harness exited: exit_code={exit_code}")
            return classify(
                results_dir=request.run_dir,
                exit_code=exit_code,
                timed_out=timed_out,
                interrupted=interrupted,
                timeout_s=spec.timeout_s,
                started_at=started_at,
                duration_s=time.monotonic() - t0,
                log_path=request.log_path,
            )
        finally:
            writer.close()


def _pump(stream: IO[bytes], writer: LogWriter) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        writer.write(chunk)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _wait(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the harness's process group, then SIGKILL after the grace period."""
    _signal_group(proc, signal.SIGTERM)
    if not _wait(proc, grace_s):
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _interrupt(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Forward Ctrl-C (SIGINT); escalate to SIGTERM/SIGKILL; a second Ctrl-C kills at once."""
    try:
        _signal_group(proc, signal.SIGINT)
        if _wait(proc, grace_s):
            return
        _terminate(proc, grace_s)
    except KeyboardInterrupt:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
