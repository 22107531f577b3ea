"""Slurm job scripts, job-state parsing and outcome mapping, without a cluster.

Apptainer, Singularity and enroot/pyxis cannot be installed on these machines, so their job
scripts are checked by content, by ``bash -n``, and by running them with a stand-in binary
that records the command line and environment it was given: the harness contract must reach
the container (``APPTAINERENV_*``, ``--container-env``) and the run folder must be bound.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.runners.conftest import tiny_config

from llenergymeasure.config.slurm import SlurmSettings
from llenergymeasure.contract import HarnessEnv
from llenergymeasure.runners.local import LocalRunner
from llenergymeasure.runners.slurm import (
    JobInfo,
    SlurmCli,
    job_outcome,
    parse_comment,
    parse_sacct,
    parse_squeue,
)
from llenergymeasure.runners.slurm_preflight import parse_gres_gpus
from llenergymeasure.runners.slurm_script import (
    apptainer_image,
    pyxis_image,
    render_job_script,
    time_limit_min,
)
from llenergymeasure.runners.spec import ContainerSettings, RunRequest
from llenergymeasure_contract.results import HarnessErrorRecord

IMAGE = "llenergymeasure/pytorch:test-cpu"


@pytest.fixture
def request_(make_request: Callable[..., RunRequest], tmp_path: Path) -> RunRequest:
    study = tmp_path / "study_1234abcd_20260101T000000Z"
    cfg = tiny_config(gpus=[0, 1])
    run_id = f"{cfg.config_hash}_c1"
    return make_request(
        cfg,
        run_id=run_id,
        run_dir=study / "runs" / run_id,
        log_path=study / "logs" / f"{run_id}.log",
        study_cache_dir=study / "cache",
        image=IMAGE,
        timeout_s=600.0,
    )


def render(request: RunRequest, **slurm: Any) -> str:
    settings = SlurmSettings(**slurm)
    return render_job_script(request, settings, ContainerSettings(), base_dir="/").text


def bash_syntax_ok(text: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sbatch"
    path.write_text(text)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("launcher", ["local", "docker", "apptainer", "singularity", "enroot"])
def test_every_launcher_script_is_valid_bash_with_sbatch_header(
    request_: RunRequest, launcher: str, tmp_path: Path
) -> None:
    """Each launcher's script parses, names the job, log, time and GPUs in #SBATCH lines."""
    text = render(request_, launcher=launcher, partition="gpu", account="proj", qos="normal")
    bash_syntax_ok(text, tmp_path)
    header = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert f"#SBATCH --job-name=llem-{request_.run_id}" in header
    assert f"#SBATCH --output={request_.log_path}" in header
    assert "#SBATCH --time=15" in header  # 600 s + 300 s margin, in minutes
    assert "#SBATCH --gres=gpu:2" in header
    assert "#SBATCH --exclusive" in header
    assert {"#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --qos=normal"} <= set(
        header
    )
    comment = next(h for h in header if h.startswith("#SBATCH --comment="))
    tags = parse_comment(comment.split("=", 1)[1])
    assert tags == {"llem.study": request_.study_id, "llem.dir": request_.run_dir.name}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("launcher", ["local", "docker", "apptainer", "singularity", "enroot"])
def test_every_launcher_script_passes_shellcheck(
    request_: RunRequest, launcher: str, tmp_path: Path
) -> None:
    """shellcheck finds nothing in any launcher's script (the ones we cannot run included)."""
    path = tmp_path / "job.sbatch"
    path.write_text(render(request_, launcher=launcher, setup=["module load x"]))
    argv = ["shellcheck", "-s", "bash", str(path)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_gpus_option_type_and_cpu_experiment(
    request_: RunRequest, make_request: Callable[..., RunRequest]
) -> None:
    """--gpus=type:N when asked; a CPU experiment requests no GPU; no --exclusive if off."""
    text = render(request_, gpu_request="gpus", gpu_type="h100", exclusive=False)
    assert "#SBATCH --gpus=h100:2" in text and "--exclusive" not in text
    cpu = make_request(tiny_config(gpus=[]))
    text = render(cpu, launcher="docker")
    assert "--gres" not in text and "--gpus" not in text and "--nv" not in text


def test_local_launcher_exports_the_contract_with_host_paths(request_: RunRequest) -> None:
    """The local launcher runs the harness with the same HarnessEnv, host paths, no image."""
    text = render(request_, launcher="local", python="/opt/py/bin/python3")
    env = exported(text)
    henv = HarnessEnv.from_env(env)
    assert henv.results_dir == str(request_.run_dir)
    assert henv.config.config_hash == request_.config.config_hash
    assert henv.image is None  # the harness on the node ran no image
    assert text.rstrip().endswith("exec /opt/py/bin/python3 -m llenergymeasure_harness")


def test_local_launcher_gets_the_local_runners_caches(request_: RunRequest) -> None:
    """The local launcher's environment is the local runner's: HF_HOME and the compile cache."""
    container = ContainerSettings(hf_cache_dir="/data/hf", compile_cache_dir="/data/compile")
    settings = SlurmSettings(launcher="local", python="/opt/py/bin/python3")
    text = render_job_script(request_, settings, container, base_dir="/").text
    env = exported(text)
    local = LocalRunner(
        python="/opt/py/bin/python3",
        base_env={},
        hf_cache_dir="/data/hf",
        compile_cache_dir="/data/compile",
    ).spec_for(request_)
    assert env["HF_HOME"] == local.env["HF_HOME"] == "/data/hf"
    assert env["LLEM_COMPILE_CACHE_DIR"] == local.env["LLEM_COMPILE_CACHE_DIR"]
    assert env["LLEM_COMPILE_CACHE_DIR"].startswith("/data/compile/local-")


def test_docker_launcher_mirrors_the_docker_runner(request_: RunRequest) -> None:
    """docker run with the ContainerSpec's mounts, labels, env by name, GPUs from Slurm."""
    text = render(request_, launcher="docker")
    (line,) = [x for x in text.splitlines() if x.startswith("docker run ")]
    assert f"--mount=type=bind,source={request_.run_dir},target=/llem/results" in line
    assert f"--label=llem.run={request_.run_id}" in line
    assert '--label=llem.owner_pid="$$"' in line  # leftover cleanup spares a live job's container
    assert "--env=LLEM_CONFIG_JSON" in line and "LLEM_CONFIG_JSON=" not in line
    assert "${HF_TOKEN:+--env=HF_TOKEN}" in line  # secrets by name, never written
    assert '--gpus="\\"device=$gpus\\""' in line
    assert 'gpus="${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}"' in text
    assert "trap stop_container TERM INT" in text
    assert HarnessEnv.from_env(exported(text)).results_dir == "/llem/results"


def exported(text: str) -> dict[str, str]:
    """The variables a script exports, as bash sees them."""
    lines = [x for x in text.splitlines() if x.startswith("export ")]
    script = "\n".join(lines) + "\nenv -0\n"
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, env={}, check=True
    ).stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def fake_binary(bin_dir: Path, name: str) -> Path:
    """A stand-in for a launcher binary that records argv and environment as JSON."""
    bin_dir.mkdir(exist_ok=True)
    record = bin_dir / f"{name}.json"
    path = bin_dir / name
    path.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "record = {'argv': sys.argv[1:], 'env': dict(os.environ)}\n"
        f"json.dump(record, open({str(record)!r}, 'w'))\n"
    )
    path.chmod(0o755)
    return record


def run_script(text: str, tmp_path: Path, binary: str, extra_env: dict[str, str]) -> Any:
    bin_dir = tmp_path / "bin"
    record = fake_binary(bin_dir, binary)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "77", **extra_env}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
    return json.loads(record.read_text())


@pytest.mark.parametrize("binary", ["apptainer", "singularity"])
def test_apptainer_script_passes_contract_and_binds(
    request_: RunRequest, tmp_path: Path, binary: str
) -> None:
    """apptainer exec --cleanenv --nv, docker:// image, binds, contract via APPTAINERENV_."""
    text = render(request_, launcher=binary)
    got = run_script(text, tmp_path, binary, {"HF_TOKEN": "secret-value"})
    argv = got["argv"]
    assert argv[:3] == ["exec", "--cleanenv", "--no-home"] and "--nv" in argv
    assert f"--bind={request_.run_dir}:/llem/results" in argv
    assert f"docker://{IMAGE}" in argv
    assert argv[-3:] == ["python3", "-m", "llenergymeasure_harness"]
    prefix = "APPTAINERENV_" if binary == "apptainer" else "SINGULARITYENV_"
    inside = {k.removeprefix(prefix): v for k, v in got["env"].items() if k.startswith(prefix)}
    henv = HarnessEnv.from_env(inside)
    assert henv.results_dir == "/llem/results" and henv.run_id == request_.run_id
    assert inside["HF_TOKEN"] == "secret-value"  # passed through by name
    assert inside["SLURM_JOB_ID"] == "77"  # the harness records it
    assert "secret-value" not in text and "HOME" not in inside


def test_enroot_script_uses_pyxis_with_container_env(request_: RunRequest, tmp_path: Path) -> None:
    """srun --container-image/--container-mounts/--container-env; env values from the job."""
    text = render(request_, launcher="enroot", setup=["echo module load"])
    got = run_script(text, tmp_path, "srun", {})
    argv = got["argv"]
    assert f"--container-image={IMAGE}" in argv
    mounts = next(a for a in argv if a.startswith("--container-mounts="))
    assert f"{request_.run_dir}:/llem/results" in mounts
    names = next(a for a in argv if a.startswith("--container-env=")).split("=", 1)[1].split(",")
    assert {"LLEM_CONFIG_JSON", "LLEM_RESULTS_DIR", "HF_TOKEN"} <= set(names)
    assert HarnessEnv.from_env(got["env"]).results_dir == "/llem/results"


def test_image_references_per_launcher() -> None:
    """Registry images become docker:// for Apptainer and registry#path for pyxis."""
    assert apptainer_image("org/img:1") == "docker://org/img:1"
    assert apptainer_image("/shared/img.sif") == "/shared/img.sif"
    assert apptainer_image("oras://reg/img:1") == "oras://reg/img:1"
    assert pyxis_image("org/img:1") == "org/img:1"
    assert pyxis_image("nvcr.io/nvidia/pytorch:24.01") == "nvcr.io#nvidia/pytorch:24.01"
    assert pyxis_image("/shared/img.sqsh") == "/shared/img.sqsh"


def test_time_limit_minutes() -> None:
    """The limit is the explicit one, or the experiment timeout + margin, rounded up."""
    assert time_limit_min(SlurmSettings(), 3600.0) == 65
    assert time_limit_min(SlurmSettings(time_limit_s=61), 3600.0) == 2
    assert time_limit_min(SlurmSettings(startup_margin_s=0), 30.0) == 1


def test_parse_squeue_and_sacct() -> None:
    """squeue's raw wait status and sacct's exit:signal both become exit code / signal."""
    text = (
        "4|CANCELLED|None|vm|15|2026-12-01T22:28:29|2026-12-01T22:28:32|llem-a|"
        "llem.study=s,llem.dir=a|\n"
        "3|FAILED|NonZeroExitCode|vm|768|2026-12-01T22:28:29|2026-12-01T22:28:30|wrap|(null)|\n"
        "7|PENDING|Priority|||N/A|N/A|llem-b|(null)|\n"
    )
    jobs = parse_squeue(text)
    assert jobs["4"].state == "CANCELLED" and jobs["4"].signal == 15
    assert jobs["4"].duration_s == 3.0 and jobs["4"].terminal
    assert jobs["3"].exit_code == 3 and jobs["3"].signal is None
    assert jobs["7"].pending and jobs["7"].node is None and jobs["7"].start is None
    acct = parse_sacct(
        "12|CANCELLED by 0|None|n1|0:15|2026-01-01T00:00:00|2026-01-01T00:01:00|llem-x|c\n"
        "12.batch|CANCELLED||n1|0:15|||batch|\n"
        "13|TIMEOUT|TimeLimit|n2|0:0|2026-01-01T00:00:00|2026-01-01T01:05:00|llem-y|\n"
    )
    assert set(acct) == {"12", "13"}
    assert acct["12"].state == "CANCELLED" and acct["12"].signal == 15
    assert acct["13"].state == "TIMEOUT" and acct["13"].node == "n2"


def info(state: str, **kw: Any) -> JobInfo:
    return JobInfo(job_id="9", state=state, node="n1", **kw)


@pytest.mark.parametrize(
    ("state", "status", "kind"),
    [
        ("TIMEOUT", "failed", "timeout"),
        ("DEADLINE", "failed", "timeout"),
        ("OUT_OF_MEMORY", "failed", "oom_killed"),
        ("CANCELLED", "failed", "cancelled"),
        ("PREEMPTED", "failed", "cancelled"),
        ("NODE_FAIL", "failed", "node_failure"),
        ("BOOT_FAIL", "failed", "node_failure"),
        ("COMPLETED", "failed", "missing_result"),
        ("FAILED", "failed", "exit_nonzero"),
    ],
)
def test_job_states_map_to_outcomes(
    request_: RunRequest, state: str, status: str, kind: str
) -> None:
    """Each terminal Slurm state gets its failure kind, with the job id and node recorded."""
    out = job_outcome(request_, info(state, exit_code=1 if state == "FAILED" else 0))
    assert (out.status, out.failure_kind) == (status, kind)
    assert out.job_id == "9" and out.node == "n1"


def test_cancel_by_us_is_interrupted_and_harness_error_read(request_: RunRequest) -> None:
    """Our own scancel is an interruption; a FAILED job with error.json is a harness error."""
    assert job_outcome(request_, info("CANCELLED"), cancelled_by_us=True).status == "interrupted"
    request_.run_dir.mkdir(parents=True)
    HarnessErrorRecord(
        error_class="ValueError", message="bad", phase="load", occurred_at="2026-01-01T00:00:00Z"
    ).write(request_.run_dir / "error.json")
    out = job_outcome(request_, info("FAILED", exit_code=1))
    assert out.failure_kind == "harness_error" and "ValueError: bad" in (out.message or "")


def test_gres_parsing() -> None:
    """sinfo GRES strings give GPUs per node, optionally of one type."""
    assert parse_gres_gpus("(null)") == 0
    assert parse_gres_gpus("gpu:8") == 8
    assert parse_gres_gpus("gpu:h100:8(S:0-1)") == 8
    assert parse_gres_gpus("gpu:a100:4,gpu:v100:2") == 6
    assert parse_gres_gpus("gpu:a100:4(S:0),gpu:v100:2", "v100") == 2


def test_cli_reports_missing_binary_and_sbatch_refusal(tmp_path: Path) -> None:
    """A missing sbatch and an sbatch error both become RunnerError with the cause."""
    from llenergymeasure.errors import RunnerError

    def missing(argv: Any) -> Any:
        raise FileNotFoundError(argv[0])

    with pytest.raises(RunnerError, match="sbatch is not installed"):
        SlurmCli(missing).submit(tmp_path / "x.sbatch")

    def refuse(argv: Any) -> Any:
        return subprocess.CompletedProcess(
            argv, 1, "", "sbatch: error: invalid partition specified: nope\n"
        )

    with pytest.raises(RunnerError, match="invalid partition specified: nope"):
        SlurmCli(refuse).submit(tmp_path / "x.sbatch")


def test_secret_never_in_script(request_: RunRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """An HF_TOKEN in the submitting environment is not written into any job script."""
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_write")
    for launcher in ("local", "docker", "apptainer", "enroot"):
        assert "hf_do_not_write" not in render(request_, launcher=launcher)
    assert os.environ["HF_TOKEN"] == "hf_do_not_write"
