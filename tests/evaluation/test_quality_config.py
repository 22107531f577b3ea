"""The quality: section at load: task files, refusals, identity, container mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.cli import main
from llenergymeasure.config.quality import lm_eval_problems
from llenergymeasure.runners.spec import rewrite_host_paths
from llenergymeasure_contract.experiment import ExperimentConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "quality"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def write_task(folder: Path, output_type: str = "multiple_choice", data: str = "d.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "d.jsonl").write_text('{"q": "a", "choices": ["x", "y"], "a": 0}\n')
    path = folder / "t.yaml"
    path.write_text(
        f"task: my_task\ndataset_path: json\ndataset_kwargs: {{data_files: {data}}}\n"
        f"test_split: train\noutput_type: {output_type}\ndoc_to_text: '{{{{q}}}}'\n"
    )
    return path


def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(
        '{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, '
        '"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, '
        '"intermediate_size": 1536, "max_position_embeddings": 8192}'
    )
    return d


def test_dummy_weights_with_quality_exit_2_naming_both_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_format: dummy with a quality section is refused at load, exit 2, naming both."""
    monkeypatch.chdir(tmp_path)
    Path("s.yaml").write_text(
        "model: tiny-llama\nload_format: dummy\ngpus: []\nquality: {tasks: [gsm8k]}\n"
    )
    code, _, err = run(capsys, "run", "s.yaml", "--dry-run")
    assert code == 2
    assert "quality:" in err and "load_format: dummy" in err
    assert "Traceback" not in err


def test_task_file_is_resolved_relative_to_the_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task YAML named relative to the study file reaches the config as an absolute path."""
    study_dir = tmp_path / "study"
    task = write_task(study_dir / "tasks")
    model = model_dir(tmp_path)
    (study_dir / "s.yaml").write_text(
        f"model: {model}\ngpus: []\nquality: {{tasks: [tasks/t.yaml, gsm8k], limit: 5}}\n"
    )
    monkeypatch.chdir(tmp_path)
    import json

    code, out, err = run(capsys, "run", "study/s.yaml", "--dry-run", "--json")
    assert code == 0, err
    quality = json.loads(out)["experiments"][0]["config"]["quality"]
    assert quality["tasks"] == [str(task), "gsm8k"]
    assert quality["limit"] == 5


def test_missing_task_file_and_data_file_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing task YAML, and a task YAML whose data file is missing, exit 2 with the path."""
    monkeypatch.chdir(tmp_path)
    write_task(tmp_path / "tasks", data="gone.jsonl")
    model = model_dir(tmp_path)
    Path("s.yaml").write_text(f"model: {model}\ngpus: []\nquality: {{tasks: [nope.yaml]}}\n")
    code, _, err = run(capsys, "run", "s.yaml", "--dry-run")
    assert code == 2 and "nope.yaml" in err and "does not exist" in err
    Path("s.yaml").write_text(f"model: {model}\ngpus: []\nquality: {{tasks: [tasks/t.yaml]}}\n")
    code, _, err = run(capsys, "run", "s.yaml", "--dry-run")
    assert code == 2 and "gone.jsonl" in err


@pytest.mark.parametrize("task", ["mmlu", "file"])
def test_loglikelihood_task_on_an_endpoint_is_refused_naming_task_and_backend(
    task: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multiple-choice task on backend endpoint (no log-probabilities) exits 2 at load."""
    monkeypatch.chdir(tmp_path)
    write_task(tmp_path / "tasks")
    name = "tasks/t.yaml" if task == "file" else "mmlu"
    model = model_dir(tmp_path)
    Path("s.yaml").write_text(
        f"model: {model}\nbackend: endpoint\nendpoint: {{url: http://127.0.0.1:9}}\n"
        f"quality: {{tasks: [{name}]}}\n"
    )
    code, _, err = run(capsys, "run", "s.yaml", "--dry-run")
    assert code == 2
    assert ("my_task" if task == "file" else "'mmlu'") in err
    assert "backend endpoint" in err


def test_generation_task_on_an_endpoint_is_accepted(tmp_path: Path) -> None:
    """A generate_until hub task is fine on a backend without log-probabilities."""
    cfg = ExperimentConfig.model_validate(
        {
            "model": "org/m",
            "backend": "endpoint",
            "endpoint": {"url": "http://127.0.0.1:9"},
            "quality": {"tasks": ["gsm8k"]},
        }
    )
    assert cfg.quality is not None and cfg.quality.task_names() == ["gsm8k"]


def test_local_runner_without_lm_eval_names_the_install_command() -> None:
    """A local-runner study with quality: and no lm_eval is refused with the pip command."""
    cfg = ExperimentConfig.model_validate(
        {"model": "org/m", "gpus": [], "quality": {"tasks": ["gsm8k"]}}
    )

    def absent(name: str) -> Any:
        return None

    problems = lm_eval_problems([cfg], "local", find_spec=absent)
    assert len(problems) == 1 and "pip install 'llenergymeasure[lm-eval]'" in problems[0]
    assert "the pytorch image carries it" in problems[0]
    trt = ExperimentConfig.model_validate(
        {
            "model": "org/m",
            "backend": "tensorrt",
            "tensorrt": {"trtllm_backend": "pytorch"},
            "quality": {"tasks": ["gsm8k"]},
        }
    )
    (both,) = lm_eval_problems([cfg, trt], "local", find_spec=absent)
    assert "runner: docker (the pytorch/trtllm images carry it)" in both
    assert lm_eval_problems([cfg], "docker", find_spec=absent) == []
    plain = cfg.model_copy(update={"quality": None})
    assert lm_eval_problems([plain], "local", find_spec=absent) == []


def test_no_quality_section_keeps_the_config_hash() -> None:
    """An experiment without quality: hashes as before the section existed."""
    cfg = ExperimentConfig.model_validate({"model": "org/m", "gpus": []})
    assert "quality" not in cfg.to_json()
    with_q = cfg.model_copy(update={"quality": None})
    assert with_q.config_hash == cfg.config_hash


def test_fewshot_as_multiturn_needs_the_chat_template() -> None:
    """fewshot_as_multiturn without apply_chat_template is a config error."""
    with pytest.raises(ValueError, match="apply_chat_template"):
        ExperimentConfig.model_validate(
            {"model": "org/m", "quality": {"tasks": ["x"], "fewshot_as_multiturn": True}}
        )


def test_task_folders_are_mounted_read_only_into_the_container() -> None:
    """Each task YAML's folder is one read-only mount; the config names the container path."""
    config = {"model": "org/m", "quality": {"tasks": ["/data/q/a.yaml", "gsm8k", "/tmp/t/b.yaml"]}}
    out, mounts = rewrite_host_paths(config)
    tasks = out["quality"]["tasks"]
    assert tasks[0] == "/data/q/a.yaml" and tasks[1] == "gsm8k"
    assert tasks[2].startswith("/llem/inputs/tasks/") and tasks[2].endswith("/b.yaml")
    sources = {m.source: m for m in mounts}
    assert sources["/data/q"].read_only and sources["/tmp/t"].read_only


def test_the_shipped_task_files_load(tmp_path: Path) -> None:
    """examples/quality's two task YAMLs have a task name, a known output type and data."""
    from llenergymeasure.config.quality import quality_problems, read_task_yaml

    for name, kind in (("facts_mc.yaml", "multiple_choice"), ("facts_gen.yaml", "generate_until")):
        data = read_task_yaml(EXAMPLES / name)
        assert data is not None and data["output_type"] == kind
    cfg = ExperimentConfig.model_validate(
        {
            "model": "org/m",
            "gpus": [],
            "quality": {
                "tasks": [str(EXAMPLES / "facts_mc.yaml"), str(EXAMPLES / "facts_gen.yaml")]
            },
        }
    )
    assert quality_problems(cfg, "quality.tasks") == []


def test_experiments_differing_only_in_quality_share_one_engine() -> None:
    """quality.* is run-time: its experiments have one engine key (execution.reuse_engine)."""
    from llenergymeasure_contract.reuse import engine_key

    base = {"model": "org/m", "gpus": [], "quality": {"tasks": ["gsm8k"], "limit": 5}}
    a = ExperimentConfig.model_validate(base)
    b = ExperimentConfig.model_validate({**base, "quality": {"tasks": ["hellaswag"]}})
    c = ExperimentConfig.model_validate({**base, "precision": "float16"})
    assert engine_key(a) == engine_key(b) != engine_key(c)
    assert a.config_hash != b.config_hash
