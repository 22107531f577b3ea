"""An engine group's members after the first are queued in the manifest (an attempt and its
folder recorded, the run still pending) until they start, so a crash of ``llem`` never loses a
written result and never shows a member running before it is."""

from __future__ import annotations

from pathlib import Path

from llenergymeasure.study.manifest import ManifestStore, RunRecord, StudyManifest


def _store(tmp_path: Path) -> ManifestStore:
    manifest = StudyManifest(
        study_id="s",
        study_name="s",
        study_design_hash="h",
        llem_version="2.0.0",
        runner="local",
        created_at="2026-12-07T00:00:00.000Z",
        updated_at="2026-12-07T00:00:00.000Z",
        runs=[RunRecord(index=i, run_id=f"r{i}", config_hash=f"c{i}", cycle=1) for i in (1, 2)],
    )
    return ManifestStore(tmp_path, manifest)


def _queue(store: ManifestStore, tmp_path: Path) -> None:
    for i, queued in ((1, False), (2, True)):
        store.start_attempt(
            f"r{i}", tmp_path / "runs" / f"r{i}", tmp_path / "logs" / f"r{i}.log", queued=queued
        )


def test_queued_member_is_pending_until_it_starts(tmp_path: Path) -> None:
    """The first member runs, the second is pending with its attempt recorded; once started
    it is running, from the moment it started."""
    store = _store(tmp_path)
    _queue(store, tmp_path)
    loaded = ManifestStore.load(tmp_path).manifest
    assert [r.state for r in loaded.runs] == ["running", "pending"]
    second = loaded.runs[1]
    assert second.last is not None and second.last.state == "pending"
    queued_at = second.last.started_at
    store.mark_running("r2")
    again = ManifestStore.load(tmp_path).manifest.runs[1]
    assert again.state == "running" and again.last is not None
    assert again.last.state == "running" and again.last.started_at >= queued_at
    store.mark_running("r1")  # already running: nothing changes
    assert ManifestStore.load(tmp_path).manifest.runs[0].attempts[0].state == "running"


def test_crash_leaves_a_queued_member_to_run_again(tmp_path: Path) -> None:
    """After a crash of llem, the running member becomes interrupted and the queued one's
    attempt is closed as not started, the run left pending for the resume."""
    store = _store(tmp_path)
    _queue(store, tmp_path)
    fixed = ManifestStore.load(tmp_path).recover_running()
    assert fixed == ["r1"]
    runs = ManifestStore.load(tmp_path).manifest.runs
    assert [r.state for r in runs] == ["interrupted", "pending"]
    last = runs[1].last
    assert last is not None and last.state == "interrupted"
    assert last.message is not None and "not started" in last.message
