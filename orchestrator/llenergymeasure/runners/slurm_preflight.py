"""Preflight for ``runner: slurm``: everything checked before the first job is submitted.

Every problem is collected and raised at once as a
:class:`~llenergymeasure.errors.PreflightError`::

    sbatch, squeue, scancel, sinfo on PATH; sacct too (without accounting: a note)
    sinfo answers (slurmctld reachable); the partition exists and is up
    a node of the partition has the GPUs one experiment asks for (sinfo's GRES column)
    input paths named in the study exist; the results directory has room
    probe job (slurm.check_shared_dir): a tiny job on the partition writes a marker into
        the results directory from a compute node; llem reads it back here, so the directory
        is shared. The same job checks the launcher and the image on that node:
            local      the harness and the backends' modules import there
            docker     docker answers there and has the image
            apptainer  apptainer/singularity is there; a .sif file is readable (docker://
                       images are pulled at the first run: noted, not checked)
            enroot     srun knows --container-image (pyxis); a .sqsh file is readable
        A probe still queued after slurm.preflight_timeout_s is cancelled and noted.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llenergymeasure.errors import PreflightError, RunnerError
from llenergymeasure.runners.preflight import (
    HARNESS_MODULE,
    PreflightReport,
    backend_modules,
    check_inputs_and_disk,
)
from llenergymeasure.runners.slurm import SlurmRunner
from llenergymeasure.runners.slurm_script import JOB_PREFIX, apptainer_image, pyxis_image

if TYPE_CHECKING:
    from llenergymeasure.study.plan import PlannedExperiment

PROBE_DIR = ".llem-slurm-probe"
MARKER_FILE = "marker.txt"
_COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")


def parse_gres_gpus(gres: str, gpu_type: str | None = None) -> int:
    """GPUs per node in an sinfo ``%G`` value (``gpu:h100:8(S:0-1),gpu:a100:2``); 0 if none."""
    total = 0
    for raw in re.split(r",(?![^(]*\))", gres or ""):
        parts = re.sub(r"\(.*?\)", "", raw).strip().split(":")
        if not parts or parts[0] != "gpu":
            continue
        count = parts[-1]
        kind = parts[1] if len(parts) == 3 else None
        if gpu_type is not None and kind != gpu_type:
            continue
        if count.isdigit():
            total += int(count)
    return total


def slurm_preflight(
    runner: SlurmRunner,
    experiments: Sequence[PlannedExperiment],
    *,
    results_dir: Path,
    input_paths: Sequence[str] = (),
    min_free_bytes: int = 0,
    probe: bool = True,
    which: Callable[[str], str | None] = shutil.which,
    sleep: Callable[[float], None] = time.sleep,
) -> PreflightReport:
    """Check the cluster for these experiments; raise ``PreflightError`` listing every problem.

    ``probe=False`` skips the probe job (a resumed study: its folder was proven shared when it
    started, and its jobs may hold the nodes the probe would wait for).
    """
    problems: list[str] = []
    report = PreflightReport()
    settings = runner.settings
    absent = [c for c in _COMMANDS if which(c) is None]
    if absent:
        problems.append(
            f"Slurm commands not found on PATH: {', '.join(absent)}; run llem on a login node "
            "of the cluster (or load its Slurm module)"
        )
        raise PreflightError(problems)
    if which("sacct") is None:
        problems.append("sacct is not on PATH (needed to read jobs slurmctld has forgotten)")
    elif not runner.cli.accounting():
        report.notes.append(
            "sacct: Slurm accounting is disabled; finished jobs are read from squeue while "
            "slurmctld remembers them (MinJobAge)"
        )
    n_gpus = max(
        (len(e.config.gpus) for e in experiments if runner.container.request_gpus), default=0
    )
    _check_partition(runner, n_gpus, problems)
    check_inputs_and_disk(input_paths, results_dir, min_free_bytes, problems)
    if not problems and settings.check_shared_dir and probe:
        _probe(runner, experiments, results_dir, report, problems, sleep=sleep)
    if problems:
        raise PreflightError(problems)
    return report


def _check_partition(runner: SlurmRunner, n_gpus: int, problems: list[str]) -> None:
    settings = runner.settings
    try:
        proc = runner.cli.sinfo(None)
    except RunnerError as exc:
        problems.append(exc.message)
        return
    if proc.returncode != 0:
        problems.append(
            f"sinfo failed (is slurmctld reachable?): {proc.stderr.strip() or proc.returncode}"
        )
        return
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.count("|") >= 3]
    names = sorted({r[0].rstrip("*") for r in rows})
    wanted = settings.partition or next(
        (r[0].rstrip("*") for r in rows if r[0].endswith("*")), None
    )
    if wanted is None:
        problems.append(
            "the cluster has no default partition; set slurm.partition "
            f"(partitions: {', '.join(names) or 'none'})"
        )
        return
    mine = [r for r in rows if r[0].rstrip("*") == wanted]
    if not mine:
        problems.append(
            f"slurm.partition: partition {wanted!r} does not exist (partitions: "
            f"{', '.join(names) or 'none'})"
        )
        return
    if all(r[3].strip() != "up" for r in mine):
        problems.append(f"partition {wanted} is not up ({mine[0][3].strip()})")
    if n_gpus:
        most = max(parse_gres_gpus(r[1], settings.gpu_type) for r in mine)
        if most < n_gpus:
            kind = f" of type {settings.gpu_type}" if settings.gpu_type else ""
            problems.append(
                f"partition {wanted} has at most {most} GPU(s){kind} per node (sinfo GRES: "
                f"{', '.join(sorted({r[1] for r in mine}))}); an experiment asks for {n_gpus}. "
                "Pick another slurm.partition, or gpus: [] on a CPU-only cluster"
            )


def probe_script(
    runner: SlurmRunner, experiments: Sequence[PlannedExperiment], probe_dir: str
) -> str:
    """The probe job: marker file from the node, plus launcher and image checks there."""
    s = runner.settings
    marker = f"{probe_dir}/{MARKER_FILE}"
    options = [
        f"--job-name={JOB_PREFIX}preflight",
        f"--output={probe_dir}/probe.log",
        "--time=5",
        "--nodes=1",
        "--ntasks=1",
    ]
    for flag, value in (("--partition", s.partition), ("--account", s.account), ("--qos", s.qos)):
        if value:
            options.append(f"{flag}={value}")
    lines = [
        "#!/bin/bash",
        "# llenergymeasure preflight probe: is the results directory shared, and can the",
        "# launcher start the image on a compute node?",
        *(f"#SBATCH {o}" for o in options),
        "set -u",
        *s.setup,
        f"out={shlex.quote(marker)}.tmp",
        'echo "node=$(hostname)" > "$out"',
    ]
    images = sorted({e.image for e in experiments})
    if s.launcher == "local":
        modules = sorted(
            {
                HARNESS_MODULE,
                *(m for e in experiments for m in backend_modules(e.config.backend)),
            }
        )
        code = (
            "import importlib.util as u; "
            f"missing = [m for m in {modules!r} if u.find_spec(m) is None]; "
            "print('missing=' + ','.join(missing) if missing else 'launcher=ok')"
        )
        lines.append(
            f'{shlex.quote(s.python)} -c {shlex.quote(code)} >> "$out" 2>&1 '
            f'|| echo "missing={shlex.quote(s.python)}" >> "$out"'
        )
    elif s.launcher == "docker":
        lines.append(
            'if docker version --format "{{.Server.Version}}" >/dev/null 2>&1; then '
            'echo launcher=ok >> "$out"; else echo "missing=docker" >> "$out"; fi'
        )
        for image in images:
            q = shlex.quote(image)
            lines.append(
                f'if docker image inspect {q} >/dev/null 2>&1; then echo "image_ok={image}" '
                f'>> "$out"; else echo "image_missing={image}" >> "$out"; fi'
            )
    elif s.launcher in ("apptainer", "singularity"):
        lines.append(
            f'if command -v {s.launcher} >/dev/null 2>&1; then echo launcher=ok >> "$out"; '
            f'else echo "missing={s.launcher}" >> "$out"; fi'
        )
        for image in images:
            ref = apptainer_image(image)
            if "://" in ref:
                lines.append(f'echo "image_unchecked={ref}" >> "$out"')
            else:
                q = shlex.quote(ref)
                lines.append(
                    f'if [ -r {q} ]; then echo "image_ok={ref}" >> "$out"; '
                    f'else echo "image_missing={ref}" >> "$out"; fi'
                )
    else:  # enroot through pyxis
        lines.append(
            "if srun --help 2>/dev/null | grep -q -- --container-image; then "
            'echo launcher=ok >> "$out"; else echo "missing=pyxis" >> "$out"; fi'
        )
        for image in images:
            ref = pyxis_image(image)
            if ref.startswith("/") or ref.endswith(".sqsh"):
                q = shlex.quote(ref)
                lines.append(
                    f'if [ -r {q} ]; then echo "image_ok={ref}" >> "$out"; '
                    f'else echo "image_missing={ref}" >> "$out"; fi'
                )
            else:
                lines.append(f'echo "image_unchecked={ref}" >> "$out"')
    lines.append(f'mv "$out" {shlex.quote(marker)}')
    return "\n".join(lines) + "\n"


def _probe(
    runner: SlurmRunner,
    experiments: Sequence[PlannedExperiment],
    results_dir: Path,
    report: PreflightReport,
    problems: list[str],
    *,
    sleep: Callable[[float], None],
) -> None:
    s = runner.settings
    base = Path(os.path.abspath(results_dir.expanduser()))
    probe_dir = base / PROBE_DIR / secrets.token_hex(6)
    try:
        probe_dir.mkdir(parents=True)
        script = probe_dir / "probe.sbatch"
        script.write_text(probe_script(runner, experiments, str(probe_dir)), encoding="utf-8")
        job_id = runner.cli.submit(script)
    except (OSError, RunnerError) as exc:
        problems.append(f"cannot submit the preflight probe job: {getattr(exc, 'message', exc)}")
        return
    deadline = time.monotonic() + s.preflight_timeout_s
    delay = 0.5
    info = None
    try:
        while time.monotonic() < deadline:
            info = runner.cli.query([job_id]).get(job_id)
            if info is not None and info.terminal:
                break
            sleep(delay)
            delay = min(5.0, delay * 1.5)
        else:
            runner.cli.cancel([job_id])
            report.notes.append(
                f"the preflight probe job {job_id} was still {info.state if info else 'queued'} "
                f"after {s.preflight_timeout_s:g} s and was cancelled: the shared results "
                "directory, launcher and image were not checked on a compute node"
            )
            return
    except RunnerError as exc:
        problems.append(f"watching the preflight probe job {job_id}: {exc.message}")
        return
    except KeyboardInterrupt:
        with contextlib.suppress(RunnerError):
            runner.cli.cancel([job_id])
        raise
    marker = probe_dir / MARKER_FILE
    log = probe_dir / "probe.log"
    if not marker.is_file():
        tail = ""
        if log.is_file():
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        problems.append(
            f"the probe job {job_id} ({info.state if info else '?'} on "
            f"{info.node if info else '?'}) left no marker in {probe_dir}: the results "
            "directory is not on a filesystem the compute nodes share (set results_dir to a "
            f"shared path){'; its log: ' + tail if tail else ''}"
        )
        return
    facts = dict(line.split("=", 1) for line in marker.read_text().splitlines() if "=" in line)
    node = facts.get("node", "?")
    for line in marker.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "missing":
            problems.append(
                f"on node {node} the {s.launcher} launcher cannot start: missing {value}"
                + (
                    "; install the harness and backends there, or use a container launcher"
                    if s.launcher == "local"
                    else ""
                )
            )
        elif key == "image_missing":
            problems.append(
                f"image {value} is not reachable by {s.launcher} on node {node}; "
                + (
                    f"docker pull {value} there (or load it)"
                    if s.launcher == "docker"
                    else "check the path in images:"
                )
            )
        elif key == "image_unchecked":
            report.notes.append(
                f"image {value} is fetched by {s.launcher} at the first job; not checked"
            )
    report.notes.append(f"preflight probe job {job_id} ran on {node} and wrote into {base}: shared")
    _remove(probe_dir)


def _remove(probe_dir: Path) -> None:
    for child in probe_dir.iterdir():
        child.unlink(missing_ok=True)
    probe_dir.rmdir()
    with contextlib.suppress(OSError):  # only when empty (another study may probe at once)
        probe_dir.parent.rmdir()
