"""The ``lora:`` section through the real CLI: good studies plan, bad ones exit 2 naming the key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from llenergymeasure.cli import main
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.loader import load_study
from llenergymeasure.runners.spec import rewrite_host_paths

HEAD = "model: tiny-llama\nload_format: dummy\nn_prompts: 8\n"
GEN = "lora:\n  adapters: [{generate: {count: 2, rank: 16}}]\n"


def _adapter(directory: Path, rank: int = 16) -> Path:
    directory.mkdir(parents=True)
    (directory / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": rank, "target_modules": ["q_proj"]})
    )
    return directory


def _run(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    capsys.readouterr()
    code = main(["run", "study.yaml", "--dry-run"])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        pytest.param(
            HEAD + "lora:\n  adapters: [./adapters/missing]\n",
            "lora.adapters[0].path: path './adapters/missing' does not exist",
            id="missing-path",
        ),
        pytest.param(
            HEAD + "lora:\n  adapters: [./adapters/empty]\n",
            "lora.adapters[0].path: ",
            id="no-adapter-config",
        ),
        pytest.param(
            HEAD + "lora:\n  adapters: [./adapters/r64]\n  max_lora_rank: 16\n",
            "lora.max_lora_rank (16) is below the rank of adapter 'r64' (64)",
            id="path-rank-above-max",
        ),
        pytest.param(
            HEAD + "lora:\n  adapters: [{generate: {count: 2, rank: 32}}]\n  max_lora_rank: 16\n",
            "lora.max_lora_rank (16) is below the rank of adapter 'lora-0' (32)",
            id="generated-rank-above-max",
        ),
        pytest.param(
            HEAD + "gpus: []\nlora:\n  adapters: [{generate: {count: 4}}]\n  max_loras: 2\n",
            "lora.max_loras (2) is below the number of adapters (4)",
            id="pytorch-needs-all-resident",
        ),
        pytest.param(
            HEAD + "backend: vllm\nlora:\n  adapters: [{served: sql}]\n",
            "lora.adapters: backend vllm cannot use served adapters",
            id="served-on-vllm",
        ),
        pytest.param(
            HEAD
            + "backend: endpoint\nendpoint: {url: 'http://127.0.0.1:8000'}\n"
            + GEN.replace("rank: 16", "rank: 8"),
            "lora.adapters: backend endpoint cannot use generated adapters",
            id="generated-on-endpoint",
        ),
        pytest.param(
            HEAD + "backend: tensorrt\n" + GEN,
            "tensorrt.trtllm_backend: pytorch",
            id="tensorrt-engine-flow",
        ),
        pytest.param(
            HEAD + "backend: vllm\nlora:\n  adapters: [{generate: {rank: 16}}]\n"
            "  max_lora_rank: 24\n",
            "lora.max_lora_rank (24) is not one backend vllm accepts",
            id="vllm-rank-choice",
        ),
        pytest.param(
            HEAD + "gpus: []\n" + GEN + "  max_cpu_loras: 4\n",
            "lora.max_cpu_loras: backend pytorch has no CPU adapter cache",
            id="cpu-cache-on-pytorch",
        ),
        pytest.param(
            HEAD + "backend: vllm\n" + GEN + "  max_loras: 2\n  max_cpu_loras: 1\n",
            "lora.max_cpu_loras (1) is below lora.max_loras (2)",
            id="cpu-cache-below-slots",
        ),
        pytest.param(
            HEAD + "backend: vllm\nlora:\n  adapters: [./adapters/r64, {path: ./adapters/r64}]\n",
            "adapter name(s) ['r64'] appear more than once",
            id="duplicate-names",
        ),
        pytest.param(
            HEAD + "gpus: []\nlora:\n  adapters: [{generate: {target_modules: [qkv]}}]\n",
            "unknown target module(s) ['qkv']",
            id="unknown-module",
        ),
        pytest.param(
            HEAD + "gpus: []\nlora:\n  adapters: []\n",
            "lora.adapters",
            id="no-adapters",
        ),
    ],
)
def test_bad_lora_sections_exit_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    needle: str,
) -> None:
    """Each bad lora: section exits 2 at load with a message naming the key and no traceback."""
    _adapter(tmp_path / "adapters" / "r64", rank=64)
    (tmp_path / "adapters" / "empty").mkdir()
    code, out = _run(tmp_path, text, capsys, monkeypatch)
    assert code == 2, out
    assert needle in out, out
    assert "study.yaml" in out
    assert "Traceback" not in out


def test_a_server_mode_without_adapter_support_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytorch's server mode (transformers serve) cannot serve adapters: exit 2."""
    text = "model: ./ckpt\nn_prompts: 8\nserver: {}\ngpus: []\n" + GEN
    (tmp_path / "ckpt").mkdir()
    code, out = _run(tmp_path, text, capsys, monkeypatch)
    assert code == 2, out
    assert "lora: the server mode of backend pytorch cannot serve LoRA adapters" in out


def test_local_adapter_paths_resolve_against_the_study_and_mount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative adapter path becomes absolute (from the study's folder), its rank is read
    from adapter_config.json, and the container spec mounts it read-only."""
    adapter = _adapter(tmp_path / "adapters" / "sql", rank=8)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the working directory does not matter
    study = tmp_path / "study.yaml"
    study.write_text(HEAD + "gpus: []\nlora:\n  adapters: [./adapters/sql]\n", encoding="utf-8")
    (exp,) = load_study(study).experiments
    assert exp.lora is not None
    (ref,) = exp.lora.refs()
    assert (ref.name, ref.kind, ref.source, ref.rank) == ("sql", "path", str(adapter), 8)
    cfg, mounts = rewrite_host_paths(json.loads(exp.to_json()))
    (mount,) = [m for m in mounts if m.source == str(adapter)]
    assert mount.read_only
    assert cfg["lora"]["adapters"][0]["path"] == mount.target  # what the harness reads


def test_lora_is_sweepable_and_leaves_other_hashes_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """lora.selection sweeps like any key, and a config without lora: keeps its old hash."""
    text = HEAD + "gpus: []\nsweep:\n  lora.selection: [round_robin, uniform, zipf]\n" + GEN
    code, out = _run(tmp_path, text, capsys, monkeypatch)
    assert code == 0, out
    assert "selection" in out  # the swept key heads its column (80-column dry-run table)
    for policy in ("round_robin", "uniform", "zipf"):
        assert policy in out
    plain = ExperimentConfig(model="tiny-llama", load_format="dummy")
    assert "lora" not in json.loads(plain.to_json())


def test_a_backend_without_lora_support_is_refused() -> None:
    """A registered backend whose spec has no LoRA support (a plugin's) refuses lora:."""
    from llenergymeasure_contract.lora import LoraConfig, check_lora_backend

    lora = LoraConfig.model_validate({"adapters": [{"generate": {"count": 1}}]})
    with pytest.raises(ValueError, match="lora: backend toy cannot serve LoRA adapters"):
        check_lora_backend(lora, None, backend="toy", server_mode=False)


def test_adapter_directories_are_input_paths_for_preflight(tmp_path: Path) -> None:
    """Preflight checks adapter directories exist, like the model and dataset paths."""
    from llenergymeasure.study.options import input_paths
    from llenergymeasure.study.plan import build_plan

    adapter = _adapter(tmp_path / "adapters" / "sql", rank=8)
    study = tmp_path / "study.yaml"
    study.write_text(HEAD + "gpus: []\nlora:\n  adapters: [./adapters/sql]\n", encoding="utf-8")
    plan = build_plan(load_study(study))
    assert str(adapter) in input_paths(list(plan.experiments), tmp_path)
