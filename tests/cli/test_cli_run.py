"""``llem run --dry-run``: the table, the JSON plan, plan-changing flags, and flag-only runs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.cli import main
from llenergymeasure.cli.run import _parse_set
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.errors import UsageError

STUDY = """\
name: cli-study
model: tiny-llama
load_format: dummy
n_prompts: 64
sweep:
  pytorch.batch_size: [1, 8]
  precision: [bfloat16, float16]
execution: {n_cycles: 2, cycle_order: sequential, config_gap_s: 5, cycle_gap_s: 50}
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(STUDY), encoding="utf-8")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out, err = run(capsys, "run", *args, "--dry-run", "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


# --------------------------------------------------------------------------- table


def test_dry_run_prints_a_table_and_a_summary(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has one row per experiment: the swept keys, memory and time; what does not
    vary (backend, model, image) is said once."""
    code, out, err = run(capsys, "run", str(study), "--dry-run")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "every experiment: backend=pytorch  model=tiny-llama  n_prompts=64"
    header = lines[1].split()
    assert header == ["#", "precision", "batch_size", "GPU", "mem", "est.", "time"]
    rows = [line for line in lines if line[:1].isdigit()]
    assert len(rows) == 4
    assert all("MiB" in r for r in rows)
    assert "image: pytorch=llenergymeasure/pytorch:" in out
    assert "experiments 4" in out
    assert "total runs 8" in out
    assert "cycles 2 (sequential)" in out
    assert "5 s between experiments, 50 s between cycles" in out


def test_dry_run_runs_nothing_and_writes_nothing(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dry run creates no results folder, even with --results-dir."""
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "out"
    code, _, _ = run(capsys, "run", str(study), "--dry-run", "--results-dir", str(results))
    assert code == 0
    assert not results.exists()
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- JSON


def test_dry_run_json_has_hashes_configs_and_ordered_runs(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The JSON plan has study_design_hash, experiments (hash + full config) and ordered runs."""
    doc = plan_json(capsys, str(study))
    assert {"study_design_hash", "experiments", "runs"} <= set(doc)
    assert len(doc["study_design_hash"]) == 16
    hashes = []
    for exp in doc["experiments"]:
        cfg = ExperimentConfig.model_validate(exp["config"])
        assert cfg.config_hash == exp["config_hash"]  # the config is complete and resolved
        assert exp["config"]["pytorch"]["batch_size"] in (1, 8)
        hashes.append(exp["config_hash"])
    assert len(set(hashes)) == 4
    expected = [{"config_hash": h, "cycle": c} for h in hashes for c in (1, 2)]
    assert doc["runs"] == expected  # sequential: A1 A2 B1 B2 ...


def test_dry_run_json_is_stable_across_invocations(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two dry runs of the same study print the same JSON document."""
    assert plan_json(capsys, str(study)) == plan_json(capsys, str(study))


# --------------------------------------------------------------------------- plan flags


def test_cycles_flag_changes_the_number_of_runs(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--cycles 3`` makes 4 experiments into 12 runs; the design hash is unchanged."""
    base = plan_json(capsys, str(study))
    doc = plan_json(capsys, str(study), "--cycles", "3")
    assert doc["execution"]["n_cycles"] == 3
    assert len(doc["runs"]) == 12
    assert doc["study_design_hash"] == base["study_design_hash"]


def test_order_flag_changes_the_run_order(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--order interleaved`` runs one pass over all experiments per cycle."""
    doc = plan_json(capsys, str(study), "--order", "interleaved")
    hashes = [e["config_hash"] for e in doc["experiments"]]
    assert doc["runs"] == [{"config_hash": h, "cycle": c} for c in (1, 2) for h in hashes]


def test_shuffled_order_flag_is_reproducible(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--order shuffled`` keeps each cycle whole and gives the same order on every call."""
    first = plan_json(capsys, str(study), "--order", "shuffled")
    again = plan_json(capsys, str(study), "--order", "shuffled")
    assert first["runs"] == again["runs"]
    assert [r["cycle"] for r in first["runs"]] == [1, 1, 1, 1, 2, 2, 2, 2]


def test_bad_order_flag_exits_2(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --order value is reported as execution.cycle_order, exit 2."""
    code, _, err = run(capsys, "run", str(study), "--dry-run", "--order", "random")
    assert code == 2
    assert "execution.cycle_order" in err


def test_no_gaps_flag_zeroes_both_gaps_and_shortens_the_estimate(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--no-gaps`` sets both gaps to 0 and removes them from the duration estimate."""
    base = plan_json(capsys, str(study))
    doc = plan_json(capsys, str(study), "--no-gaps")
    assert (doc["execution"]["config_gap_s"], doc["execution"]["cycle_gap_s"]) == (0.0, 0.0)
    # sequential A1 A2 B1 B2 C1 C2 D1 D2 has no passes over the experiments, so each of the
    # 7 steps rests config_gap_s (5 s); cycle_gap_s applies only to interleaved/shuffled
    saved = base["estimated_duration_s"] - doc["estimated_duration_s"]
    assert saved == pytest.approx(7 * 5)


def test_results_dir_and_runner_flags_show_in_the_plan(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--results-dir`` and ``--runner`` are reflected in the JSON plan."""
    doc = plan_json(capsys, str(study), "--results-dir", "/tmp/x", "--runner", "local")
    assert doc["results_dir"] == "/tmp/x"
    assert doc["runner"]["runner"] == "local"


# --------------------------------------------------------------------------- flag-only runs


def test_flags_alone_describe_one_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    """``llem run --model tiny-llama --load-format dummy --backend pytorch --dry-run`` works."""
    code, out, err = run(
        capsys,
        "run",
        "--model",
        "tiny-llama",
        "--load-format",
        "dummy",
        "--backend",
        "pytorch",
        "--dry-run",
    )
    assert code == 0, err
    assert "tiny-llama" in out
    assert "experiments 1" in out


def test_flags_alone_fill_the_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    """Every experiment flag lands in the resolved config of the flag-only plan."""
    doc = plan_json(
        capsys,
        "--model",
        "tiny-llama",
        "--load-format",
        "dummy",
        "--backend",
        "vllm",
        "--precision",
        "float16",
        "--n-prompts",
        "32",
        "--max-input-tokens",
        "64",
        "--max-output-tokens",
        "16",
        "--batch-size",
        "4",
        "--gpus",
        "0,1",
    )
    (exp,) = doc["experiments"]
    cfg = exp["config"]
    assert (cfg["backend"], cfg["precision"], cfg["n_prompts"]) == ("vllm", "float16", 32)
    assert (cfg["max_input_tokens"], cfg["max_output_tokens"]) == (64, 16)
    assert cfg["vllm"]["max_num_seqs"] == 4  # --batch-size maps to the backend's batch knob
    assert cfg["gpus"] == [0, 1]


def test_batch_size_flag_follows_the_study_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--batch-size`` on a tensorrt study sets tensorrt.max_batch_size."""
    path = tmp_path / "s.yaml"
    path.write_text("model: tiny-llama\nload_format: dummy\nbackend: tensorrt\n", encoding="utf-8")
    doc = plan_json(capsys, str(path), "--batch-size", "16")
    assert doc["experiments"][0]["config"]["tensorrt"]["max_batch_size"] == 16


def test_batch_size_flag_with_a_backend_sweep_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--batch-size`` is ambiguous when the study sweeps backend: exit 2 with a hint."""
    path = tmp_path / "s.yaml"
    path.write_text(
        "model: tiny-llama\nload_format: dummy\nsweep:\n  backend: [pytorch, vllm]\n",
        encoding="utf-8",
    )
    code, _, err = run(capsys, "run", str(path), "--dry-run", "--batch-size", "4")
    assert code == 2
    assert "ambiguous" in err and "--set" in err


def test_batch_size_flag_sees_the_backend_of_a_base_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backend set (or swept) only in a ``base:`` file still decides what --batch-size sets."""
    (tmp_path / "base.yaml").write_text(
        "model: tiny-llama\nload_format: dummy\nbackend: vllm\n", encoding="utf-8"
    )
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\n", encoding="utf-8")
    doc = plan_json(capsys, str(child), "--batch-size", "4")
    assert doc["experiments"][0]["config"]["vllm"]["max_num_seqs"] == 4

    (tmp_path / "base.yaml").write_text(
        "model: tiny-llama\nload_format: dummy\nsweep:\n  backend: [pytorch, vllm]\n",
        encoding="utf-8",
    )
    code, _, err = run(capsys, "run", str(child), "--dry-run", "--batch-size", "4")
    assert code == 2
    assert "ambiguous" in err


def test_bad_gpus_flag_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``--gpus 0,x`` is a usage error naming the flag."""
    code, _, err = run(capsys, "run", "--model", "tiny-llama", "--gpus", "0,x", "--dry-run")
    assert code == 2
    assert "--gpus" in err


def test_flag_values_are_validated_like_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag value is a config error attributed to the command line."""
    code, _, err = run(capsys, "run", "--model", "tiny-llama", "--precision", "fp7", "--dry-run")
    assert code == 2
    assert "<command line>" in err
    assert "precision" in err


def test_model_flag_overrides_the_study(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model`` on a study replaces the model of every experiment."""
    doc = plan_json(capsys, str(study), "--model", "llama-3.2-1b")
    assert {e["config"]["model"] for e in doc["experiments"]} == {"llama-3.2-1b"}


def test_overriding_a_swept_key_from_the_command_line_exits_2(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--precision`` on a study that sweeps precision is refused, exit 2."""
    code, _, err = run(capsys, "run", str(study), "--dry-run", "--precision", "float32")
    assert code == 2
    assert "<command line> precision: is a sweep axis" in err


# --------------------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("decoder.temperature=0.7", {"decoder.temperature": 0.7}),
        ("n_prompts=32", {"n_prompts": 32}),
        ("ignore_eos=false", {"ignore_eos": False}),
        ("gpus=[0, 1]", {"gpus": [0, 1]}),
        ("pytorch.model_kwargs={a: 1}", {"pytorch.model_kwargs": {"a": 1}}),
        ("tokenizer=", {"tokenizer": ""}),
        ("revision=a=b", {"revision": "a=b"}),
        (" model =tiny-llama", {"model": "tiny-llama"}),
    ],
)
def test_set_values_are_parsed_as_yaml(item: str, expected: dict[str, Any]) -> None:
    """``--set KEY=VALUE`` parses VALUE as YAML (numbers, booleans, lists, mappings)."""
    assert _parse_set([item]) == expected


@pytest.mark.parametrize("item", ["no-equals-sign", "=1", "  =x", "gpus=[0, 1"])
def test_bad_set_items_are_usage_errors(item: str) -> None:
    """A --set item without a key, without '=', or with invalid YAML is a UsageError."""
    with pytest.raises(UsageError) as info:
        _parse_set([item])
    assert "--set" in str(info.value)


def test_set_reaches_nested_fields_through_the_cli(
    study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Repeated ``--set`` options land in every experiment's resolved config."""
    doc = plan_json(
        capsys,
        str(study),
        "--set",
        "decoder.temperature=0.7",
        "--set",
        "warmup.n_batches=3",
    )
    for exp in doc["experiments"]:
        assert exp["config"]["decoder"]["temperature"] == 0.7
        assert exp["config"]["decoder"]["do_sample"] is True
        assert exp["config"]["warmup"]["n_batches"] == 3


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("decoder.temprature=0.7", "did you mean 'temperature'"),
        ("novalue", "expected KEY=VALUE"),
        ("n_prompts=0", "n_prompts"),
    ],
)
def test_bad_set_through_the_cli_exits_2(
    study: Path, capsys: pytest.CaptureFixture[str], item: str, needle: str
) -> None:
    """A misspelt, malformed or out-of-range --set exits 2 and says why."""
    code, _, err = run(capsys, "run", str(study), "--dry-run", "--set", item)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- steady-state notes

REPO = Path(__file__).resolve().parents[2]


def _llem(*args: str) -> subprocess.CompletedProcess[str]:
    """``llem ARGS`` through the console-script entry, run from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", "from llenergymeasure.cli import entrypoint; entrypoint()", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _notes(stdout: str) -> list[str]:
    """The plan's ``note:`` paragraphs, their wrapped lines joined."""
    return [" ".join(n.split()) for n in " ".join(stdout.split()).split("note: ")[1:]]


def test_dry_run_of_the_h200_poisson_sweep_sizes_from_the_arrivals() -> None:
    """``llem run benchmarks/h200/vllm-poisson.yaml --dry-run``: every rate has about 40 s of
    arrivals, enough for a 30 s window, so there is no steady-state note (the offline wave rule
    asked for 3040 prompts at 4 req/s)."""
    proc = _llem("run", "benchmarks/h200/vllm-poisson.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "total runs 3" in proc.stdout
    assert "steady state" not in proc.stdout + proc.stderr
    assert "3040" not in proc.stdout


def test_dry_run_of_a_short_poisson_sweep_names_rate_span_and_a_size() -> None:
    """The same sweep at 100 prompts is 25 s of arrivals at 4 req/s: a note sized from the rate
    (about 140 prompts), not thousands."""
    proc = _llem("run", "benchmarks/h200/vllm-poisson.yaml", "--dry-run", "--set", "n_prompts=100")
    assert proc.returncode == 0, proc.stderr
    notes = [n for n in _notes(proc.stdout) if "steady state" in n]
    assert len(notes) == 3, proc.stdout
    first = notes[0]
    assert "experiment 1: n_prompts 100 at 4 req/s is 25 s of arrivals" in first
    need = int(first.split("n_prompts >= ")[1].split(maxsplit=1)[0])
    assert 133 <= need < 200  # 1 + 1.1 x 4 x (30 s + a lifetime of a few seconds)


def test_dry_run_of_in_process_against_server_names_the_scheduler_budget() -> None:
    """``llem run benchmarks/h200/vllm-r16-repeat.yaml --dry-run`` compares vLLM in-process
    with `vllm serve` on vLLM's defaults: a note says they resolve different batched-token
    budgets; setting vllm.max_num_batched_tokens removes it."""
    proc = _llem("run", "benchmarks/h200/vllm-r16-repeat.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert any("without vllm.max_num_batched_tokens" in n for n in _notes(proc.stdout))
    pinned = _llem(
        "run",
        "benchmarks/h200/vllm-r16-repeat.yaml",
        "--dry-run",
        "--set",
        "vllm.max_num_batched_tokens=8192",
    )
    assert pinned.returncode == 0, pinned.stderr
    assert not any("max_num_batched_tokens" in n for n in _notes(pinned.stdout))
