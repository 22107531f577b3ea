"""The study directory, in one place: create it, find it, open and check its plan + manifest.

::

    <results_dir>/<name>_<design8>_<UTC time>/
        plan.json  manifest.json  study_result.json  results.parquet  summary.csv
        runs/<config_hash>_c<cycle>/        (a retry: ..._c<cycle>_a2; never overwritten)
        logs/<run folder>.log
        cache/baseline.json                 (shared by the study's runs)
"""

from __future__ import annotations

import re
from pathlib import Path

from llenergymeasure import __version__
from llenergymeasure.errors import ConfigError, PreflightError, StorageError
from llenergymeasure.runners.base import RunOutcome, load_result
from llenergymeasure.study.manifest import (
    MANIFEST_FILE,
    ManifestStore,
    RunRecord,
    StudyManifest,
    damaged,
    read_damage_checked,
)
from llenergymeasure.study.options import absolute
from llenergymeasure.study.plan import StudyPlan, plan_json
from llenergymeasure_contract.files import RESULT_FILE
from llenergymeasure_contract.results import write_json_atomic
from llenergymeasure_contract.timestamps import utc_compact, utc_iso

PLAN_FILE = "plan.json"
#: The time stamp a study folder's name has before the folder exists (``--dry-run``).
PLACEHOLDER_STAMP = "YYYYMMDDTHHMMSSZ"


def slug(text: str) -> str:
    """``text`` made safe for a folder name (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "study"


def study_dir_name(plan: StudyPlan, stamp: str) -> str:
    """``<name>_<design8>_<stamp>``: the folder name of a study started at ``stamp``."""
    return f"{slug(plan.study.name)}_{plan.study_design_hash[:8]}_{stamp}"


def new_study_dir(base: Path, plan: StudyPlan) -> Path:
    """Create a fresh study folder (with ``runs/``, ``logs/``, ``cache/``) under ``base``.

    Raises:
        PreflightError: the folder cannot be created.
    """
    name = study_dir_name(plan, utc_compact())
    try:
        base.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            candidate = base / (name if n == 1 else f"{name}-{n}")
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            for sub in ("runs", "logs", "cache"):
                (candidate / sub).mkdir()
            return candidate
    except OSError as exc:
        raise PreflightError(
            [f"cannot create the study directory under {base}: {exc.strerror or exc}"],
            hint="pick a writable --results-dir",
        ) from exc
    raise PreflightError([f"too many study directories named {name}* under {base}"])


def start_study(study_dir: Path, plan: StudyPlan, runner_name: str) -> ManifestStore:
    """Write ``plan.json`` and a manifest with every run pending into ``study_dir``.

    Raises:
        StorageError: either file could not be written.
    """
    now = utc_iso()
    manifest = StudyManifest(
        study_id=study_dir.name,
        study_name=plan.study.name,
        study_design_hash=plan.study_design_hash,
        source=plan.study.source,
        llem_version=__version__,
        runner=runner_name,
        created_at=now,
        updated_at=now,
        runs=[
            RunRecord(index=i, run_id=r.run_id, config_hash=r.config_hash, cycle=r.cycle)
            for i, r in enumerate(plan.runs, start=1)
        ],
    )
    try:
        write_json_atomic(study_dir / PLAN_FILE, plan_json(plan))  # proven to read back
        store = ManifestStore(study_dir, manifest)
        store.write()
    except OSError as exc:
        raise storage_error(exc, study_dir, resumable=False) from exc
    return store


def find_study_dir(target: Path, plan: StudyPlan | None) -> Path:
    """The study folder ``target`` names: itself, or the latest unfinished one of a study file.

    Raises:
        ConfigError: no such study folder.
    """
    target = target.expanduser()
    if target.is_dir() and (target / MANIFEST_FILE).is_file():
        return target
    if target.is_file() or plan is not None:
        wanted = plan or plan_from_file(target)
        base = absolute(wanted.study.results_dir)
        candidates = []
        for manifest_path in sorted(base.glob(f"*/{MANIFEST_FILE}")):
            try:
                m = ManifestStore.load(manifest_path.parent).manifest
            except ConfigError:  # a damaged one is reported when resumed by its folder
                continue
            if m.study_design_hash == wanted.study_design_hash and m.state != "completed":
                candidates.append((m.updated_at, manifest_path.parent))
        if candidates:
            return max(candidates)[1]
        raise ConfigError(
            f"no unfinished study with design hash {wanted.study_design_hash} under {base}",
            hint="run it without --resume to start it",
        )
    raise ConfigError(
        f"{target} is neither a study directory (with {MANIFEST_FILE}) nor a study file",
        hint="pass the folder printed when the study started, e.g. results/<name>_<hash>_<time>",
    )


def plan_from_file(path: Path) -> StudyPlan:
    """The plan of a study file, loaded as ``llem run`` loads it."""
    from llenergymeasure.config.loader import load_study
    from llenergymeasure.config.user import load_user_defaults, user_config_path
    from llenergymeasure.study.plan import build_plan

    study = load_study(path, user=load_user_defaults(user_config_path()))
    return build_plan(study)


def open_study_dir(study_dir: Path) -> tuple[ManifestStore, StudyPlan]:
    """The manifest and plan of ``study_dir``, checked against each other before any write.

    Raises:
        ConfigError: either file is missing, truncated, of the wrong schema, or they disagree
            (a run the plan does not know, another design); names the file and the problem.
    """
    store = ManifestStore.load(study_dir)
    plan_path = study_dir / PLAN_FILE
    saved = read_damage_checked(plan_path, StudyPlan, what="study plan")
    m = store.manifest
    problems: list[str] = []
    if saved.study_design_hash != m.study_design_hash:
        problems.append(
            f"study_design_hash {m.study_design_hash} differs from {plan_path}'s "
            f"{saved.study_design_hash}"
        )
    else:
        known = {r.run_id for r in saved.runs}
        hashes = {e.config_hash for e in saved.experiments}
        unknown = [r.run_id for r in m.runs if r.run_id not in known or r.config_hash not in hashes]
        missing = sorted(known - {r.run_id for r in m.runs})
        if unknown:
            problems.append(f"runs {unknown[:5]} are not in {plan_path}")
        elif missing:
            problems.append(f"runs {missing[:5]} of {plan_path} have no record here")
    if problems:
        raise damaged(store.path, "study manifest", problems)
    return store, saved


def check_design(store: ManifestStore, plan: StudyPlan | None) -> None:
    """Refuse to resume ``store`` with a plan of another study design.

    Raises:
        ConfigError: the design hashes differ.
    """
    if plan is not None and plan.study_design_hash != store.manifest.study_design_hash:
        raise ConfigError(
            f"{store.study_dir} was run from a different study design "
            f"({store.manifest.study_design_hash}, this one {plan.study_design_hash})",
            hint="resume with the study file it was started from, or start a new study",
        )


def run_folder(study_dir: Path, run_id: str, attempt: int) -> Path:
    """The folder of ``attempt`` at ``run_id``; never one that exists already."""
    name = run_id if attempt == 1 else f"{run_id}_a{attempt}"
    candidate = study_dir / "runs" / name
    n = attempt
    while candidate.exists():  # never overwrite a folder, whatever left it there
        n += 1
        candidate = study_dir / "runs" / f"{run_id}_a{n}"
    return candidate


def adopt_finished(store: ManifestStore) -> list[str]:
    """Runs not marked completed whose last folder holds this run's valid ``result.json``.

    The harness writes ``result.json`` last and atomically, so its presence means the
    measurement finished; this happens when the study stopped (a signal, a lost Docker
    connection) after the harness had written it. Such a run is marked completed, so it is
    neither lost nor measured twice. Called after the leftover containers were removed.
    """
    adopted = []
    for rec in store.manifest.runs:
        last = rec.last
        if rec.state == "completed" or last is None:
            continue
        run_dir = store.study_dir / last.run_dir
        result, _ = load_result(run_dir)
        if result is None or result.run_id != rec.run_id:
            continue
        store.finish_attempt(
            rec.run_id,
            RunOutcome(
                status="completed",
                message=f"{last.state} ({last.failure_kind}) when the study stopped, but its "
                f"{RESULT_FILE} had been written: counted as completed",
                exit_code=last.exit_code,
                started_at=last.started_at,
                finished_at=last.finished_at or utc_iso(),
                duration_s=last.duration_s,
                result_path=str(run_dir / RESULT_FILE),
                result=result,
            ),
        )
        adopted.append(rec.run_id)
    return adopted


def storage_error(exc: OSError, study_dir: Path, *, resumable: bool = True) -> StorageError:
    """A :class:`StorageError` naming the path that could not be written."""
    path = exc.filename or study_dir
    why = exc.strerror or str(exc)
    hint = "free some space (or fix the permissions)"
    if resumable:
        hint += f", then resume with: llem run --resume {study_dir}"
    else:
        hint += " and run the study again"
    return StorageError(f"cannot write {path}: {why}", path=str(path), hint=hint)
