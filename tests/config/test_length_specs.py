"""Length distributions and workload profiles in a study file, through the real CLI.

Every bad spec exits 2 naming its key; good ones load with the file data embedded (so the
config hash covers it), sweep like any other key, and profiles fill what the study leaves out.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from llenergymeasure.cli import main
from llenergymeasure.config.loader import load_study
from llenergymeasure_contract.lengths import EmpiricalLengths, ExponentialLengths

HEAD = "model: tiny-llama\nload_format: dummy\nn_prompts: 64\n"

BAD = [
    (
        "negative-stddev",
        "output_len: {dist: normal, mean: 50, stddev: -1}",
        {},
        "output_len.stddev",
    ),
    ("max-below-min", "output_len: {dist: uniform, min: 20, max: 10}", {}, "output_len.max"),
    ("mean-above-max", "input_len: {dist: exponential, mean: 90, max: 50}", {}, "input_len.mean"),
    (
        "mean-below-min",
        "input_len: {dist: lognormal, mean: 5, stddev: 2, min: 10}",
        {},
        "input_len.mean",
    ),
    ("pareto-shape-1", "input_len: {dist: pareto, mean: 50, shape: 1}", {}, "input_len.shape"),
    ("unknown-dist", "output_len: {dist: zipf, mean: 5}", {}, "dataset.output_len"),
    ("extra-key", "output_len: {dist: exponential, mean: 5, sd: 3}", {}, "output_len.sd"),
    ("string-length", "output_len: lots", {}, "dataset.output_len"),
    ("missing-file", "output_len: {dist: empirical, path: none.csv}", {}, "output_len.path"),
    ("empty-file", "output_len: {dist: empirical, path: e.csv}", {"e.csv": ""}, "output_len.path"),
    (
        "bad-file",
        "output_len: {dist: empirical, path: b.csv}",
        {"b.csv": "10\n-3\n"},
        "output_len.path",
    ),
    (
        "bad-jsonl",
        "output_len: {dist: empirical, path: b.jsonl}",
        {"b.jsonl": '{"len": 3}\n'},
        "output_len.path",
    ),
    (
        "histogram-shape",
        "output_len: {dist: empirical, bins: [1, 5], counts: [1, 2]}",
        {},
        "dataset.output_len",
    ),
    (
        "min-above-cap",
        "output_len: {dist: uniform, min: 200, max: 300}\nmax_output_tokens: 100",
        {},
        "dataset.output_len.min",
    ),
    ("missing-profile", "profile: ./nope.yaml", {}, "dataset.profile"),
    ("bad-profile", "profile: p.yaml", {"p.yaml": "name: x\noutput_len: 5\n"}, "dataset.profile"),
]


@pytest.mark.parametrize(("spec", "files", "key"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_length_spec_exits_2_naming_its_key(
    spec: str, files: dict[str, str], key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``llem run STUDY --dry-run`` with a bad length spec exits 2 and names the key."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    lines = spec.split("\n")
    dataset = "dataset:\n  " + lines[0] + "\n" + "\n".join(lines[1:]) + "\n"
    path = tmp_path / "study.yaml"
    path.write_text(HEAD + dataset, encoding="utf-8")
    code = main(["run", str(path), "--dry-run"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert code == 2, text
    assert key in text, text
    assert "Traceback" not in text


def _load(tmp_path: Path, text: str) -> list:  # type: ignore[type-arg]
    path = tmp_path / "study.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return list(load_study(path).experiments)


def test_empirical_file_is_embedded_and_hashed(tmp_path: Path) -> None:
    """A length file is read relative to the study, embedded, and its content is in the hash."""
    (tmp_path / "lengths.csv").write_text("length\n10\n20\n20\n", encoding="utf-8")
    study = HEAD + "dataset:\n  output_len: {dist: empirical, path: lengths.csv}\n"
    (exp,) = _load(tmp_path, study)
    spec = exp.dataset.output_len
    assert isinstance(spec, EmpiricalLengths)
    assert (spec.values, spec.counts, spec.path) == ([10, 20], [1, 2], "lengths.csv")
    assert exp.max_output_tokens == 128  # no max: the cap stays the default
    (tmp_path / "lengths.csv").write_text("length\n10\n30\n", encoding="utf-8")
    (other,) = _load(tmp_path, study)
    assert other.config_hash != exp.config_hash


def test_histogram_json_and_jsonl_files(tmp_path: Path) -> None:
    """A JSON histogram embeds as bins/counts; JSONL objects give their ``length``."""
    (tmp_path / "h.json").write_text(json.dumps({"bins": [1, 10, 20], "counts": [3, 1]}))
    (tmp_path / "l.jsonl").write_text('{"length": 4}\n7\n{"length": 4}\n')
    (exp,) = _load(
        tmp_path,
        HEAD + "dataset:\n  output_len: {dist: empirical, path: h.json, max: 20}\n"
        "  input_len: {dist: empirical, path: l.jsonl}\n",
    )
    assert exp.dataset.output_len.bins == [1, 10, 20]
    assert exp.dataset.input_len.values == [4, 7]
    assert exp.dataset.input_len.counts == [2, 1]
    assert exp.max_output_tokens == 20  # the distribution's max becomes the cap


def test_distribution_sweeps_as_an_axis(tmp_path: Path) -> None:
    """A sweep axis may hold distributions and integers; each point gets its own spec."""
    exps = _load(
        tmp_path,
        HEAD + "sweep:\n  dataset.output_len:\n    - {dist: exponential, mean: 40, max: 128}\n"
        "    - 64\n",
    )
    assert len(exps) == 2
    assert isinstance(exps[0].dataset.output_len, ExponentialLengths)
    assert exps[1].dataset.output_len == 64


def test_builtin_profile_fills_lengths_and_caps(tmp_path: Path) -> None:
    """``profile: lm-arena-chat`` gives the lengths, the caps and the provenance."""
    (exp,) = _load(tmp_path, HEAD + "dataset: {profile: lm-arena-chat}\n")
    assert exp.dataset.provenance is not None
    assert exp.dataset.provenance.name == "lm-arena-chat"
    assert exp.max_output_tokens == 4096
    assert exp.max_input_tokens == 16384
    assert isinstance(exp.dataset.output_len, EmpiricalLengths)


def test_explicit_length_overrides_profile_and_profiles_sweep(tmp_path: Path) -> None:
    """An explicit output_len beats the profile's; ``dataset.profile`` is a sweep axis."""
    exps = _load(
        tmp_path,
        HEAD + "dataset: {output_len: 32}\nsweep:\n"
        "  dataset.profile: [lm-arena-chat, mlenergy-length-control]\n",
    )
    assert [e.dataset.provenance.name for e in exps] == ["lm-arena-chat", "mlenergy-length-control"]
    assert all(e.dataset.output_len == 32 for e in exps)
    assert exps[1].dataset.input_len.dist == "pareto"


def test_user_profile_file_relative_to_the_study(tmp_path: Path) -> None:
    """A profile file (with its own relative length file) loads like a built-in profile."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "out.csv").write_text("5\n6\n7\n", encoding="utf-8")
    (tmp_path / "w" / "mine.yaml").write_text(
        textwrap.dedent(
            """\
            name: mine
            description: my traffic
            source: our gateway logs
            date: 2026-12-01
            reproduces: {output_len: {mean: 6}}
            input_len: {dist: uniform, min: 4, max: 12}
            output_len: {dist: empirical, path: out.csv}
            """
        ),
        encoding="utf-8",
    )
    (exp,) = _load(tmp_path, HEAD + "dataset: {profile: w/mine.yaml}\n")
    assert exp.dataset.provenance.source == "our gateway logs"
    assert exp.dataset.output_len.values == [5, 6, 7]
    assert exp.max_input_tokens == 12


def test_many_distinct_lengths_embed_as_a_histogram(tmp_path: Path) -> None:
    """Over 2,048 distinct lengths become a histogram of whole-token bins (config stays small)."""
    (tmp_path / "many.csv").write_text("\n".join(str(n) for n in range(1, 5001)) + "\n")
    (exp,) = _load(
        tmp_path, HEAD + "dataset:\n  output_len: {dist: empirical, path: many.csv, max: 5000}\n"
    )
    spec = exp.dataset.output_len
    assert spec.values is None and spec.bins is not None
    assert len(spec.counts) <= 1024 and sum(spec.counts) == 5000
    assert spec.bins[0] == 0.5 and spec.bins[-1] >= 5000.5
    assert len(exp.to_json()) < 64_000
