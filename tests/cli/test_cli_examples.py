"""Every example study loads, dry-runs and matches the JSON Schema; ``llem config`` reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from llenergymeasure.cli import main
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.user import ENV_USER_CONFIG

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
#: Globbed, so a new example is covered without touching this file.
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml")) + sorted(EXAMPLES_DIR.glob("*.json"))

HAS_JSONSCHEMA = importlib.util.find_spec("jsonschema") is not None


def _local_model_missing(example: Path) -> bool:
    """True for an example whose model is a local folder a setup step creates (the SmolLM2
    conversion of examples/quality-smollm2.yaml) and that is not there."""
    if example.suffix != ".yaml":
        return False
    model = (yaml.safe_load(example.read_text()) or {}).get("model")
    return (
        isinstance(model, str) and model.startswith("~/") and not Path(model).expanduser().exists()
    )


#: The examples, each skipped when its model folder is a setup step away.
EXAMPLE_PARAMS = [
    pytest.param(
        p,
        id=p.name,
        marks=pytest.mark.skipif(
            _local_model_missing(p),
            reason=f"{p.name}: its model folder is created by its setup step (see the file)",
        ),
    )
    for p in EXAMPLES
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def schema(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(capsys, "config", "schema")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_there_are_examples_of_each_kind() -> None:
    """Issue 2 asks for a single experiment, a multi-backend sweep and a CPU-only example."""
    names = {p.name for p in EXAMPLES}
    assert {"single-experiment.yaml", "multi-backend-sweep.yaml", "cpu-quickstart.yaml"} <= names


@pytest.mark.parametrize("example", EXAMPLE_PARAMS)
def test_example_dry_runs_as_a_table(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``llem run EXAMPLE --dry-run`` exits 0 and prints a plan with at least one run."""
    code, out, err = run(capsys, "run", str(example), "--dry-run")
    assert code == 0, err
    assert "total runs" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("example", EXAMPLE_PARAMS)
def test_example_dry_runs_as_json(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example's JSON plan has resolved configs whose hashes match, and ordered runs."""
    code, out, err = run(capsys, "run", str(example), "--dry-run", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["experiments"] and doc["runs"]
    hashes = set()
    for exp in doc["experiments"]:
        assert ExperimentConfig.model_validate(exp["config"]).config_hash == exp["config_hash"]
        hashes.add(exp["config_hash"])
    assert {r["config_hash"] for r in doc["runs"]} == hashes
    assert len(doc["runs"]) == len(hashes) * doc["execution"]["n_cycles"]


def test_multi_backend_example_expands_as_its_comment_says(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """multi-backend-sweep.yaml: 2 precisions x (2 + 2 + 2) scoped values = 12 experiments."""
    code, out, _ = run(
        capsys, "run", str(EXAMPLES_DIR / "multi-backend-sweep.yaml"), "--dry-run", "--json"
    )
    assert code == 0
    backends = [e["config"]["backend"] for e in json.loads(out)["experiments"]]
    assert len(backends) == 12
    assert {b: backends.count(b) for b in set(backends)} == {
        "pytorch": 4,
        "vllm": 4,
        "tensorrt": 4,
    }


# --------------------------------------------------------------------------- JSON Schema


def test_schema_is_a_closed_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """``llem config schema`` is draft 2020-12 JSON, closed at the top level, with study keys."""
    doc = schema(capsys)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["type"] == "object"
    assert doc["additionalProperties"] is False
    props = set(doc["properties"])
    assert {"sweep", "experiments", "execution", "base", "name", "runner", "images"} <= props
    assert set(ExperimentConfig.model_fields) <= props


@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="jsonschema is not installed")
def test_schema_is_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """The schema itself passes the draft 2020-12 meta-schema."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema(capsys))


@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="jsonschema is not installed")
@pytest.mark.parametrize("example", EXAMPLE_PARAMS)
def test_example_validates_against_the_schema(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each example file, as written, is valid under the editor schema."""
    import jsonschema

    data = yaml.safe_load(example.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema(capsys)).validate(data)


@pytest.mark.skipif(not HAS_JSONSCHEMA, reason="jsonschema is not installed")
@pytest.mark.parametrize(
    "bad",
    [
        {"model": "x", "n_promts": 3},
        {"model": "x", "decoder": {"temprature": 0.1}},
        {"experiments": [{"modle": "x"}]},
        {"sweep": {"precision": "float16"}},
        {"execution": {"cycle_order": "random"}},
    ],
    ids=["top-level-typo", "nested-typo", "entry-typo", "sweep-not-list", "bad-order"],
)
def test_schema_rejects_what_the_loader_rejects(
    bad: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Typos and wrong shapes the loader refuses are flagged by the editor schema too."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema(capsys))
    assert list(validator.iter_errors(bad))


def test_schema_output_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``llem config schema -o FILE`` writes the same schema to FILE."""
    target = tmp_path / "study.schema.json"
    code, out, _ = run(capsys, "config", "schema", "-o", str(target))
    assert code == 0
    assert str(target) in out
    assert json.loads(target.read_text(encoding="utf-8")) == schema(capsys)


# --------------------------------------------------------------------------- llem config


def test_config_json_reports_host_and_user_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llem config --json`` is one JSON document with host and user_config sections."""
    user = tmp_path / "user.yaml"
    user.write_text("runner: local\nconfig_gap_s: 5\n", encoding="utf-8")
    monkeypatch.setenv(ENV_USER_CONFIG, str(user))
    code, out, err = run(capsys, "config", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert {"host", "user_config"} <= set(doc)
    assert doc["user_config"]["path"] == str(user)
    assert doc["user_config"]["exists"] is True
    assert doc["user_config"]["values"] == {"runner": "local", "config_gap_s": 5.0, "images": {}}


def test_config_without_json_prints_host_and_user_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Plain ``llem config`` prints the host and says the user file is disabled."""
    code, out, err = run(capsys, "config")
    assert code == 0, err
    assert "host" in out
    assert "user defaults" in out


def test_bad_user_config_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken user defaults file makes ``llem run`` exit 2 naming that file."""
    user = tmp_path / "user.yaml"
    user.write_text("runner: kubernetes\n", encoding="utf-8")
    monkeypatch.setenv(ENV_USER_CONFIG, str(user))
    code, _, err = run(capsys, "run", "--model", "tiny-llama", "--dry-run")
    assert code == 2
    assert str(user) in err
    assert "runner" in err
