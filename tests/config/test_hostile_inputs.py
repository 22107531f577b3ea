"""Hostile input, typed as a user types it: the real ``llem`` from a working directory.

Each case ends with a clear refusal (exit 2 naming the file and the key, with the fix, no
traceback), or, for GPUs the host lacks, the preflight's exit 1 before anything runs. A
credential typed into a URL never reaches the console, a file or the error itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from llenergymeasure.cli import main
from llenergymeasure.config.loader import load_study
from llenergymeasure.config.study import MAX_GAP_S, MAX_TIMEOUT_S
from llenergymeasure.runners.docker import DockerRunner
from llenergymeasure.runners.spec import ContainerSettings
from llenergymeasure.study.executor import StudyRunOptions, run_study
from llenergymeasure.study.plan import StudyPlan, build_plan, plan_json
from llenergymeasure.testing.fake_docker import FakeDockerClient, FakeHarness, write_fake_result
from llenergymeasure_contract.strict import MAX_SEED, MAX_TOKENS

REPO = Path(__file__).resolve().parents[2]
LLEM = [sys.executable, "-c", "import sys; from llenergymeasure.cli import main; sys.exit(main())"]
HEAD: dict[str, Any] = {
    "model": "tiny-llama",
    "load_format": "dummy",
    "n_prompts": 4,
    "max_input_tokens": 8,
    "max_output_tokens": 4,
    "gpus": [],
}
PASSWORD = "hunter2"


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's working directory (results go to ./results)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def study(path: Path, text: str | None = None, **fields: Any) -> Path:
    """Write ``study.yaml``: ``text`` as given, or the small CPU study with ``fields``."""
    if text is None:
        text = yaml.safe_dump({**HEAD, **fields}, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def llem(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``llem ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(result: tuple[int, str, str], *needles: str, code: int = 2) -> str:
    """Assert a clean refusal naming every needle; return stderr."""
    got, out, err = result
    assert got == code, (out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def llem_subprocess(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``llem ARGS`` as a separate process from ``cwd``, with this checkout first."""
    paths = [str(REPO / "contract"), str(REPO / "harness"), str(REPO / "orchestrator")]
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]),
        "LLEM_USER_CONFIG": "",
        "LLEM_NO_GPU": "1",
        **env,
    }
    return subprocess.run(
        [*LLEM, *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# --------------------------------------------------------------------------- security


SECRET_URLS = [
    (
        "endpoint-userinfo",
        {"backend": "endpoint", "endpoint": {"url": f"http://admin:{PASSWORD}@127.0.0.1:9"}},
        "endpoint.url",
    ),
    (
        "endpoint-query",
        {"backend": "endpoint", "endpoint": {"url": f"http://127.0.0.1:9/?api_key={PASSWORD}"}},
        "endpoint.url",
    ),
    (
        "endpoint-as-text",
        {"backend": "endpoint", "endpoint": f"http://admin:{PASSWORD}@127.0.0.1:9"},
        "endpoint",
    ),
    (
        "webhook-userinfo",
        {"notify": {"webhooks": [f"https://bot:{PASSWORD}@hooks.example.org/x"]}},
        "notify.webhooks.0.url",
    ),
    (
        "webhook-token",
        {"notify": {"webhooks": [{"url": f"https://hooks.example.org/x?token={PASSWORD}"}]}},
        "notify.webhooks.0.url",
    ),
]


@pytest.mark.parametrize(
    ("fields", "key"), [c[1:] for c in SECRET_URLS], ids=[c[0] for c in SECRET_URLS]
)
def test_credentials_in_a_url_are_refused_and_never_written(
    tmp_path: Path, fields: dict[str, Any], key: str
) -> None:
    """A password in any URL is exit 2 naming the file and key, with the way to pass it by
    variable name; the value is in no output and no file (run, --dry-run, --dry-run --json)."""
    path = study(tmp_path / "study.yaml", **fields)
    for args in (
        ("run", "study.yaml"),
        ("run", "study.yaml", "--dry-run"),
        ("run", "study.yaml", "--dry-run", "--json"),
    ):
        proc = llem_subprocess(tmp_path, *args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert PASSWORD not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr
        assert "study.yaml" in proc.stderr and key in proc.stderr, proc.stderr
        if "endpoint" in fields and isinstance(fields["endpoint"], dict):
            assert "api_key_env" in proc.stderr and "basic_auth_env" in proc.stderr
        if "notify" in fields:
            assert "secret_env" in proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != path]
    assert not [p for p in written if PASSWORD.encode() in p.read_bytes()]
    assert not (tmp_path / "results").exists()


def test_endpoint_credentials_by_variable_name_are_accepted(cwd: Path, capsys) -> None:
    """``endpoint.basic_auth_env`` names the variable; only the name reaches the plan."""
    study(
        cwd / "study.yaml",
        backend="endpoint",
        endpoint={"url": "http://127.0.0.1:9", "basic_auth_env": "LLEM_EP_AUTH"},
    )
    code, out, err = llem(capsys, "run", "study.yaml", "--dry-run", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["experiments"][0]["config"]["endpoint"]["basic_auth_env"] == "LLEM_EP_AUTH"
    study(
        cwd / "study.yaml",
        backend="endpoint",
        endpoint={"url": "http://127.0.0.1:9", "basic_auth_env": f"admin:{PASSWORD}"},
    )
    err = refused(llem(capsys, "run", "study.yaml", "--dry-run"), "endpoint.basic_auth_env")
    assert PASSWORD not in err


SLURM_BAD = [
    ("partition-newlines", {"partition": "gpu\n#SBATCH --uid=0\nrm -rf $HOME"}, "slurm.partition"),
    ("account-nul", {"account": "a\x00b"}, "slurm.account"),
    ("qos-space", {"qos": "high; rm -rf /"}, "slurm.qos"),
    ("gpu-type-newline", {"gpu_type": "h100\nrm"}, "slurm.gpu_type"),
    ("mem-format", {"mem": "64 GB"}, "slurm.mem"),
    ("mem-injection", {"mem": "64G\n#SBATCH --uid=0"}, "slurm.mem"),
    ("sbatch-arg-newline", {"sbatch_args": ["--constraint=h100\nrm -rf ~"]}, "slurm.sbatch_args"),
    ("sbatch-arg-quote", {"sbatch_args": ['--comment="x']}, "slurm.sbatch_args"),
    ("sbatch-arg-not-option", {"sbatch_args": ["rm -rf ~"]}, "slurm.sbatch_args"),
    ("setup-newline", {"setup": ["module load x\nrm -rf ~"]}, "slurm.setup"),
    ("python-nul", {"python": "python3\x00"}, "slurm.python"),
    ("poll-min-above-max", {"poll_min_s": 60, "poll_max_s": 30}, "slurm.poll_min_s"),
    ("time-inf", {"time_limit_s": float("inf")}, "slurm.time_limit_s"),
    ("cpus-bool", {"cpus_per_task": True}, "slurm.cpus_per_task"),
]


@pytest.mark.parametrize(
    ("fields", "key"), [c[1:] for c in SLURM_BAD], ids=[c[0] for c in SLURM_BAD]
)
def test_slurm_fields_that_would_reach_the_job_script_are_checked(
    cwd: Path, capsys, fields: dict[str, Any], key: str
) -> None:
    """Every slurm: field written into a job script is refused when it is not one clean value
    in Slurm's format: exit 2 naming the key, before any script exists."""
    study(cwd / "study.yaml", runner="slurm", slurm=fields)
    err = refused(llem(capsys, "run", "study.yaml", "--dry-run"), "study.yaml", key)
    assert "\n#SBATCH --uid" not in err and "\nrm -rf" not in err
    assert not (cwd / "results").exists()


def test_study_name_with_control_characters_is_refused_not_printed(cwd: Path, capsys) -> None:
    """A NUL or newline (or a terminal escape) in ``name:`` is exit 2, shown escaped."""
    for name in ("a\x00b", "line\nbreak", "\x1b[2Jclear"):
        study(cwd / "study.yaml", name=name)
        code, out, err = llem(capsys, "run", "study.yaml", "--dry-run")
        refused((code, out, err), "study.yaml", "name:", "printable")
        assert name not in out + err


# --------------------------------------------------------------------------- silent results


def test_gpus_the_host_lacks_stop_in_preflight(
    cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gpus: [0]`` on a host without a GPU (no nvidia-smi) stops before anything runs,
    listing the GPUs found (none); nothing is measured, no study folder is made."""
    empty_bin = cwd / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("LLEM_NO_GPU", raising=False)
    study(cwd / "study.yaml", gpus=[0])
    refused(
        llem(capsys, "run", "study.yaml", "--runner", "local", "-y"),
        "GPUs [0]",
        "GPUs found: none",
        "gpus: []",
        code=1,
    )
    assert not list(cwd.glob("results/*/runs/*"))


def test_cpu_study_still_plans(cwd: Path, capsys) -> None:
    """``gpus: []`` (the CPU) is still a valid study."""
    study(cwd / "study.yaml")
    assert llem(capsys, "run", "study.yaml", "--dry-run")[0] == 0


BAD_VALUES = [
    ("n_prompts-true", {"n_prompts": True}, "n_prompts: must be a number, not true"),
    ("n_cycles-true", {"execution": {"n_cycles": True}}, "execution.n_cycles"),
    ("gpus-true", {"gpus": [True]}, "gpus"),
    ("batch-false", {"pytorch": {"batch_size": False}}, "pytorch.batch_size"),
    ("sweep-axis-true", {"sweep": {"n_prompts": [4, True]}}, "sweep.n_prompts[1]"),
    ("temperature-true", {"decoder": {"temperature": True}}, "decoder.temperature"),
    ("gap-inf", {"execution": {"config_gap_s": float("inf")}}, "execution.config_gap_s"),
    ("gap-nan", {"execution": {"cycle_gap_s": float("nan")}}, "execution.cycle_gap_s"),
    ("gap-huge", {"execution": {"config_gap_s": 1e300}}, "execution.config_gap_s"),
    ("timeout-inf", {"execution": {"experiment_timeout_s": float("inf")}}, "experiment_timeout_s"),
    ("top-p-nan", {"decoder": {"top_p": float("nan")}}, "decoder.top_p"),
    (
        "penalty-inf",
        {"decoder": {"repetition_penalty": float("inf")}},
        "decoder.repetition_penalty",
    ),
    ("warmup-inf", {"warmup": {"min_duration_s": float("inf")}}, "warmup.min_duration_s"),
    (
        "rate-inf",
        {"traffic": {"pattern": "poisson", "rate_per_s": float("inf")}},
        "traffic.rate_per_s",
    ),
    ("carbon-inf", {"carbon": {"grid_gco2_per_kwh": float("inf")}}, "carbon.grid_gco2_per_kwh"),
    (
        "sweep-section-and-key",
        {"sweep": {"decoder": [{"temperature": 0.5}], "decoder.temperature": [0.1]}},
        "sweep.decoder.temperature",
    ),
    ("slurm-without-slurm", {"runner": "docker", "slurm": {"partition": "gpu"}}, "runner: slurm"),
    (
        "results-dir-unset-var",
        {"results_dir": "${LLEM_SURELY_UNSET_VAR}/out"},
        "LLEM_SURELY_UNSET_VAR",
    ),
    ("results-dir-bare-dollar", {"results_dir": "out/$/x"}, "results_dir"),
    ("results-dir-newline", {"results_dir": "out\nx"}, "results_dir"),
    ("max-output-tokens", {"max_output_tokens": 10**12}, "max_output_tokens"),
    ("max-input-tokens", {"max_input_tokens": 10**12}, "max_input_tokens"),
    ("random-seed-huge", {"random_seed": 2**80}, "random_seed"),
    ("random-seed-negative", {"random_seed": -1}, "random_seed"),
    ("shuffle-seed-huge", {"execution": {"shuffle_seed": 2**80}}, "execution.shuffle_seed"),
    ("model-huge", {"model": "a" * 2_000_000, "load_format": "auto"}, "model"),
    ("model-newline", {"model": "org/model\n--uid=0"}, "model"),
]


@pytest.mark.parametrize(
    ("fields", "key"), [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES]
)
def test_silently_wrong_or_extreme_values_are_refused(
    cwd: Path, capsys, fields: dict[str, Any], key: str
) -> None:
    """Booleans for numbers, NaN/inf, a section swept with its own keys, a slurm: section
    nobody reads, an unset variable, values past the documented limits: exit 2 naming the
    key; no echoed value longer than a line."""
    assert "LLEM_SURELY_UNSET_VAR" not in os.environ
    study(cwd / "study.yaml", **fields)
    err = refused(llem(capsys, "run", "study.yaml", "--dry-run"), "study.yaml", key)
    assert max(len(line) for line in err.splitlines()) < 600
    assert not (cwd / "results").exists()


def test_results_dir_variables_are_expanded(
    cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$HOME``, ``${VAR}`` and ``~`` in results_dir are expanded, never a folder named $HOME."""
    home = cwd / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LLEM_OUT", "llem-out")
    for given, want in (
        ("$HOME/llem-out", home / "llem-out"),
        ("${HOME}/${LLEM_OUT}", home / "llem-out"),
        ("~/llem-out", home / "llem-out"),
    ):
        study(cwd / "study.yaml", results_dir=given)
        code, out, err = llem(capsys, "run", "study.yaml", "--dry-run", "--json")
        assert code == 0, err
        assert json.loads(out)["results_dir"] == str(want)


def test_a_study_at_extreme_valid_values_runs_and_resumes(
    cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every limit at its edge still plans, writes a plan.json that reads back unchanged, runs
    (fake engine) and resumes: llem never calls its own plan.json damaged."""
    monkeypatch.setenv("LLEM_USER_CONFIG", "")
    path = study(
        cwd / "study.yaml",
        name="étude ☃ extreme",
        random_seed=MAX_SEED,
        max_input_tokens=MAX_TOKENS,
        max_output_tokens=MAX_TOKENS,
        decoder={"temperature": 10.0, "top_p": 5e-324, "repetition_penalty": 1e308},
        baseline={"enabled": True, "duration_s": 600.0, "cache_ttl_s": 1e308},
        energy={"sample_rate_hz": 100.0},
        images={"pytorch": "llem/fake:1"},
        execution={
            "n_cycles": 2,
            "cycle_order": "shuffled",
            "shuffle_seed": MAX_SEED,
            "config_gap_s": MAX_GAP_S,
            "cycle_gap_s": MAX_GAP_S,
            "experiment_timeout_s": MAX_TIMEOUT_S,
        },
    )
    plan = build_plan(load_study(path))
    text = plan_json(plan)
    assert StudyPlan.model_validate_json(text).model_dump_json(indent=1) == text
    client = FakeDockerClient(images={"llem/fake:1"}, harness=FakeHarness(write=write_fake_result))
    runner = DockerRunner(ContainerSettings(request_gpus=False), client=client, poll_s=0.01)
    opts = StudyRunOptions(quiet=True, interactive=False, request_gpus=False, min_free_bytes=0)
    result = run_study(
        plan, opts, runner=runner, console=Console(file=io.StringIO()), sleep=lambda s: None
    )
    assert result.state == "completed"
    (study_dir,) = [p.parent for p in (cwd / "results").glob("*/manifest.json")]
    code, out, err = llem(capsys, "run", "--resume", str(study_dir))
    assert code == 0, err
    assert "damaged" not in out + err and "already completed" in out


# --------------------------------------------------------------------------- crashes, hangs


def test_deeply_nested_yaml_and_json_are_refused(cwd: Path, capsys) -> None:
    """10,000 nested lists (YAML or JSON): exit 2 naming the file, no RecursionError."""
    deep = "[" * 10_000 + "]" * 10_000
    study(cwd / "study.yaml", f"model: tiny-llama\nx: {deep}\n")
    refused(llem(capsys, "run", "study.yaml", "--dry-run"), "study.yaml", "nest")
    (cwd / "study.json").write_text('{"model": "m", "x": ' + deep + "}")
    refused(llem(capsys, "run", "study.json", "--dry-run"), "study.json", "nest")
    shallow = "[" * 70 + "]" * 70
    study(cwd / "study.yaml", f"model: tiny-llama\nx: {shallow}\n")
    refused(llem(capsys, "run", "study.yaml", "--dry-run"), "study.yaml", "more than 64 levels")


def test_symlink_loop_fifo_and_directory_as_study_file(cwd: Path, capsys) -> None:
    """A symlink loop, a FIFO (would block forever) and a directory: exit 2 naming the path."""
    (cwd / "a.yaml").symlink_to(cwd / "b.yaml")
    (cwd / "b.yaml").symlink_to(cwd / "a.yaml")
    refused(llem(capsys, "run", "a.yaml", "--dry-run"), "a.yaml", "symbolic links")
    os.mkfifo(cwd / "fifo.yaml")
    refused(llem(capsys, "run", "fifo.yaml", "--dry-run"), "fifo.yaml", "not a regular file")
    (cwd / "dir.yaml").mkdir()
    refused(llem(capsys, "run", "dir.yaml", "--dry-run"), "dir.yaml", "is a directory")


def test_fifo_study_file_does_not_hang_the_real_command(tmp_path: Path) -> None:
    """As a separate process too: a FIFO given as the study file returns at once."""
    os.mkfifo(tmp_path / "study.yaml")
    proc = llem_subprocess(tmp_path, "run", "study.yaml", "--dry-run")
    assert proc.returncode == 2 and "not a regular file" in proc.stderr


def test_a_huge_value_is_never_echoed_whole(cwd: Path, capsys) -> None:
    """A 2 MB model string is exit 2 naming ``model``; the message stays short."""
    study(cwd / "study.yaml", model="x" * 2_000_000, load_format="auto")
    err = refused(llem(capsys, "run", "study.yaml", "--dry-run"), "model", "4,096")
    assert len(err) < 2000
    study(cwd / "study.yaml", n_prompts="y" * 100_000)
    err = refused(llem(capsys, "run", "study.yaml", "--dry-run"), "n_prompts", "characters)")
    assert len(err) < 2000


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "is a directory"),
        (b"", "is empty"),
        (b"\x7fELF\x00\x01\x02", "binary"),
        (b"just text\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
    ],
    ids=["directory", "empty", "binary", "not-json", "not-object"],
)
def test_jsonl_dataset_is_checked_at_load(
    cwd: Path, capsys, content: bytes | None, says: str
) -> None:
    """A JSONL dataset that is a directory, empty, binary or not JSON lines: exit 2 naming
    dataset.path and the file, at load (not half way through a run)."""
    data = cwd / "prompts.jsonl"
    if content is None:
        data.mkdir()
    else:
        data.write_bytes(content)
    study(
        cwd / "study.yaml", tokenizer="gpt2", dataset={"source": "jsonl", "path": "prompts.jsonl"}
    )
    refused(llem(capsys, "run", "study.yaml", "--dry-run"), "dataset.path", "prompts.jsonl", says)


def test_results_show_on_a_missing_path_and_truncated_json(cwd: Path, capsys) -> None:
    """``results show`` on a path that does not exist says so; on a truncated
    study_result.json it says truncated, naming the file."""
    refused(llem(capsys, "results", "show", "nope"), "nope", "no such file or directory")
    (cwd / "s").mkdir()
    (cwd / "s" / "study_result.json").write_text('{"study_id": "x", "runs": [{"a": 1')
    refused(llem(capsys, "results", "show", "s"), "study_result.json", "truncated")


def test_report_output_that_cannot_be_written_is_a_clear_error(cwd: Path, capsys) -> None:
    """``results report -o`` at a directory, in a missing folder, under a file or somewhere
    unwritable: exit 2 saying which, and no "-v" hint from a command that has no -v."""
    (cwd / "out").mkdir()
    (cwd / "plain").write_text("")
    for target, says in (
        ("out", "is a directory"),
        ("missing/r.html", "does not exist"),
        ("plain/r.html", "is not a folder"),
        ("/proc/r.html", "cannot write"),
    ):
        err = refused(llem(capsys, "results", "report", "nope", "-o", target), target, says)
        assert "-v" not in err


def test_an_internal_error_hint_works_for_the_command_that_failed(
    cwd: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in a command without -v says LLEM_DEBUG=1, which does show it."""
    from llenergymeasure.analysis import table

    def boom(path: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(table, "load_study_dir", boom)
    code, _, err = llem(capsys, "results", "show", ".")
    assert code == 1 and "LLEM_DEBUG=1" in err and "-v" not in err
    monkeypatch.setenv("LLEM_DEBUG", "1")
    code, _, err = llem(capsys, "results", "show", ".")
    assert code == 1 and "Traceback" in err
