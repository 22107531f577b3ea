"""Journeys that end before any container: bad input and damaged study files.

Typed as a user types them (``llem ...`` in a working directory), each ends with exit 2, a
message naming the file and the key or problem, no traceback, and nothing rewritten.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.journeys.conftest import Journey

from llenergymeasure.cli import main
from llenergymeasure.config.loader import load_study
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.spec import ContainerSettings
from llenergymeasure.study.executor import StudyRunOptions, run_study
from llenergymeasure.study.plan import build_plan
from llenergymeasure.testing.fake_docker import FakeDockerClient, FakeHarness, write_fake_result


@pytest.fixture
def typed(journey: Journey, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``typed("run", "study.yaml")`` -> (exit code, stdout, stderr), run in the journey's cwd."""
    monkeypatch.chdir(journey.cwd)
    monkeypatch.setenv("LLEM_USER_CONFIG", journey.env["LLEM_USER_CONFIG"])

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def _refused(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, (out, err)
    assert "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_blank_model_is_refused(journey: Journey, typed) -> None:
    """An empty or blank ``model`` is exit 2 naming the key."""
    for blank in ("", "   "):
        journey.write_study(model=blank)
        _refused(
            typed("run", "study.yaml", "--dry-run"), "study.yaml", "model", "must not be empty"
        )


def test_yaml_mapping_used_as_key_is_refused(journey: Journey, typed) -> None:
    """A YAML mapping (or list) used as a key is exit 2 with the line, not a TypeError."""
    (journey.cwd / "study.yaml").write_text("model: tiny-llama\n? {a: 1}\n: x\n")
    _refused(typed("run", "study.yaml", "--dry-run"), "study.yaml", "line 2", "used as a key")
    (journey.cwd / "study.yaml").write_text("model: tiny-llama\n? [a, b]\n: x\n")
    _refused(typed("run", "study.yaml", "--dry-run"), "a list is used as a key")


def test_huge_sweep_is_refused_fast_with_size_and_limit(journey: Journey, typed) -> None:
    """10^8 sweep points are refused in under 2 s with the size and the (overridable) limit."""
    values = list(range(100))
    journey.write_study(
        sweep={
            "n_prompts": [v + 1 for v in values],
            "max_output_tokens": [v + 1 for v in values],
            "max_input_tokens": [v + 1 for v in values],
            "random_seed": values,
        }
    )
    t0 = time.monotonic()
    err = _refused(typed("run", "study.yaml", "--dry-run"), "100,000,000 experiments", "100,000")
    assert time.monotonic() - t0 < 2.0
    assert "max_experiments" in err
    journey.write_study(sweep={"n_prompts": [1, 2, 3]}, max_experiments=2)
    _refused(typed("run", "study.yaml", "--dry-run"), "3 experiments", "limit of 2")
    journey.write_study(sweep={"n_prompts": [1, 2, 3]}, max_experiments=3)
    assert typed("run", "study.yaml", "--dry-run")[0] == 0


def test_literal_secret_in_docker_env_is_refused(journey: Journey, typed) -> None:
    """A credential-looking docker.env key with a value is exit 2; the value is never printed."""
    secret = "hf_literalSecret987654321"
    journey.write_study(docker={"env": {"HF_TOKEN": secret, "MY_FLAG": "1"}})
    err = _refused(
        typed("run", "study.yaml", "--dry-run"), "docker.env", "HF_TOKEN", "env_passthrough"
    )
    assert secret not in err
    journey.write_study(docker={"env_passthrough": ["HF_TOKEN"], "env": {"MY_FLAG": "1"}})
    code, out, _ = typed("run", "study.yaml", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out)["runner"]["docker"]["env_passthrough"] == ["HF_TOKEN"]


def _completed_study(journey: Journey) -> Path:
    """A finished two-run study under ./results, made through a fake engine (no Docker)."""
    path = journey.write_study()
    plan = build_plan(load_study(path))
    client = FakeDockerClient(images={journey.image}, harness=FakeHarness(write=write_fake_result))
    runner = DockerRunner(ContainerSettings(request_gpus=False), client=client, poll_s=0.01)
    opts = StudyRunOptions(quiet=True, interactive=False, request_gpus=False, min_free_bytes=0)
    result = run_study(plan, opts, runner=runner, console=Console(file=io.StringIO()))
    assert result.state == "completed"
    return journey.study_dir()


@pytest.mark.parametrize(
    ("name", "damage", "says"),
    [
        ("manifest.json", lambda t: t[: len(t) // 2], "damaged study manifest"),
        ("manifest.json", lambda t: json.dumps({"runs": "no"}), "study_id: Field required"),
        (
            "manifest.json",
            lambda t: t.replace(json.loads(t)["runs"][0]["config_hash"], "0" * 16, 1),
            "are not in",
        ),
        ("plan.json", lambda t: t[:100], "damaged study plan"),
        ("plan.json", lambda t: "[]", "damaged study plan"),
    ],
    ids=[
        "manifest-truncated",
        "manifest-schema",
        "manifest-unknown-run",
        "plan-truncated",
        "plan-schema",
    ],
)
def test_damaged_study_file_is_exit_2_and_nothing_rewritten(
    journey: Journey, typed, name: str, damage, says: str
) -> None:
    """A damaged manifest.json / plan.json: exit 2 naming the file and the problem; no writes."""
    study_dir = _completed_study(journey)
    path = study_dir / name
    path.write_text(damage(path.read_text()))
    snapshot = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    rel = f"results/{study_dir.name}"
    _refused(typed("run", "--resume", rel), f"{study_dir / name}", says)
    after = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file()}
    assert after == snapshot


def test_resume_of_a_completed_study_changes_nothing(journey: Journey, typed) -> None:
    """Resuming a finished study says so, exits 0 and leaves every file as it was."""
    study_dir = _completed_study(journey)
    snapshot = {
        p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file() and p.name != ".lock"
    }
    code, out, err = typed("run", "--resume", f"results/{study_dir.name}")
    assert code == 0, err
    assert "already completed" in out
    after = {p: p.read_bytes() for p in study_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == snapshot


def test_experiment_flags_are_refused_on_resume(journey: Journey, typed) -> None:
    """--model, --set, --results-dir ... cannot change a started study: exit 2, said so."""
    study_dir = _completed_study(journey)
    rel = f"results/{study_dir.name}"
    _refused(typed("run", "--resume", rel, "--model", "x"), "--model cannot change a started study")
    _refused(typed("run", "--resume", rel, "--set", "n_prompts=3"), "--set")
    _refused(typed("run", "--resume", rel, "--results-dir", "elsewhere"), "--results-dir")
