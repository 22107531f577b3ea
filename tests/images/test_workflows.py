"""The workflows and the Python they call agree (the YAML itself is linted by `make lint`)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llenergymeasure import images

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


def _load(name: str) -> dict[str, object]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict)
    return data


def test_images_workflow_uses_only_matrix_keys_python_provides() -> None:
    """Every `matrix.X` images.yml reads is a key of each llenergymeasure.images matrix entry."""
    text = (WORKFLOWS / "images.yml").read_text()
    used = set(re.findall(r"\$\{\{\s*matrix\.([a-z_]+)", text))
    assert used, "images.yml reads no matrix keys"
    for entry in images.matrix("v2.0.0")["include"]:
        assert used <= set(entry), used - set(entry)


def test_images_workflow_smoke_tests_before_pushing() -> None:
    """The smoke test step comes after the build and before any push or registry login."""
    steps = _load("images.yml")["jobs"]["build"]["steps"]  # type: ignore[index]
    names = [str(s.get("name", s.get("uses", s.get("run", "")))) for s in steps]
    smoke = next(i for i, n in enumerate(names) if n.startswith("Smoke test"))
    build = next(i for i, n in enumerate(names) if n == "Build")
    push = next(i for i, n in enumerate(names) if n == "Push")
    logins = [i for i, n in enumerate(names) if "login-action" in n]
    assert build < smoke < min([push, *logins])
    run_text = " ".join(str(s.get("run", "")) for s in steps)
    assert "scripts/smoke-test-image.sh" in run_text


def test_workflows_trigger_on_release_tags_and_pushes() -> None:
    """images and release run on version tags; ci on pushes and pull requests."""
    for name in ("images.yml", "release.yml"):
        on = _load(name).get(True) or _load(name)["on"]  # YAML 1.1 reads `on` as True
        assert on == {"push": {"tags": ["v*.*.*"]}}, name
    ci_on = _load("ci.yml").get(True) or _load("ci.yml")["on"]
    assert set(ci_on) == {"push", "pull_request"}  # type: ignore[arg-type]


def test_ci_workflow_runs_the_makefile_targets() -> None:
    """CI calls the same Makefile targets people and .ci/run use."""
    text = (WORKFLOWS / "ci.yml").read_text()
    for target in ("make lint", "make typecheck", "make test-images", "make test"):
        assert target in text


def test_every_action_is_pinned_to_a_commit_or_allowed_ref() -> None:
    """`uses:` references are 40-hex commit pins, except PyPA's publish action (release/v1)."""
    for path in WORKFLOWS.glob("*.yml"):
        for ref in re.findall(r"uses:\s*(\S+)", path.read_text()):
            action, _, version = ref.partition("@")
            if action == "pypa/gh-action-pypi-publish":
                assert version == "release/v1"
            else:
                assert re.fullmatch(r"[0-9a-f]{40}", version), f"{path.name}: {ref}"
