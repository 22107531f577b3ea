"""The server: and traffic: sections through the real CLI: good files plan, bad ones exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from llenergymeasure.cli import main

HEAD = "model: tiny-llama\nload_format: dummy\nn_prompts: 16\n"

BAD = [
    ("traffic-rate-missing", "traffic: {pattern: poisson}\n", "needs traffic.rate_per_s"),
    (
        "traffic-rate-offline",
        "traffic: {rate_per_s: 2}\n",
        "traffic.rate_per_s has no effect with pattern offline",
    ),
    ("traffic-unknown-key", "traffic: {rate: 2}\n", "traffic.rate"),
    ("traffic-slo-empty", "traffic: {slo: {}}\n", "traffic.slo sets no objective"),
    (
        "traffic-sweep-bad-value",
        "traffic: {pattern: poisson, rate_per_s: 1}\nsweep:\n  traffic.rate_per_s: [1, -2]\n",
        "sweep.traffic.rate_per_s[1]",
    ),
    ("server-port", "backend: vllm\nserver: {port: 70000}\n", "server.port"),
    ("server-reserved-arg", "backend: vllm\nserver: {args: [--port, '9']}\n", "--port"),
    ("server-pytorch-dummy", "server: {}\n", "cannot build dummy weights"),
]


@pytest.mark.parametrize(("text", "key"), [(t, k) for _, t, k in BAD], ids=[b[0] for b in BAD])
def test_bad_traffic_or_server_section_exits_2_with_the_key(
    text: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llem run BAD --dry-run`` exits 2, names the file and the key, shows no traceback."""
    path = tmp_path / "study.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    code = main(["run", str(path), "--dry-run"])
    out = capsys.readouterr()
    assert code == 2, out.out + out.err
    assert str(path) in out.err and key in out.err, out.err
    assert "Traceback" not in out.err


def test_a_rate_sweep_plans_one_experiment_per_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sweep: {traffic.rate_per_s: [...]}`` expands like any field: 3 rates, 3 hashes."""
    monkeypatch.chdir(tmp_path)
    Path("study.yaml").write_text(
        HEAD
        + "gpus: []\ntraffic: {pattern: poisson, rate_per_s: 1, seed: 3}\n"
        + "sweep:\n  traffic.rate_per_s: [1, 2, 4]\n",
        encoding="utf-8",
    )
    assert main(["run", "study.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line.split() for line in lines if line.startswith("#"))
    assert header[:2] == ["#", "rate_per_s"]  # the swept key's column, named by its last part
    rows = [line.split()[:2] for line in lines if line[:1].isdigit()]
    assert rows == [["1", "1"], ["2", "2"], ["3", "4"]]
    assert "experiments 3" in out
