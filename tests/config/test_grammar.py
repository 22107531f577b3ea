"""The study-file grammar of issue 2, rule by rule (docs/study-grammar.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llenergymeasure.cli import main
from llenergymeasure.config import ExperimentConfig
from llenergymeasure.config.loader import load_study
from llenergymeasure.config.study import StudyConfig
from llenergymeasure.config.user import ENV_USER_CONFIG, UserDefaults, load_user_defaults
from llenergymeasure.errors import ConfigError
from llenergymeasure.study.plan import build_plan

Write = Callable[[str, str], Path]

TINY = """\
model: tiny-llama
load_format: dummy
n_prompts: 64
"""


def problems_of(path: Path, **kwargs: Any) -> str:
    """The text of the ConfigError that loading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        load_study(path, **kwargs)
    return str(info.value)


def values(study: StudyConfig, getter: Callable[[ExperimentConfig], Any]) -> list[Any]:
    return [getter(e) for e in study.experiments]


# --------------------------------------------------------------------------- sweep


def test_sweep_is_the_cartesian_product_of_its_lists(write: Write) -> None:
    """Two unscoped axes of 2 and 3 values give 6 experiments, one per combination."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  precision: [bfloat16, float16]
  n_prompts: [8, 16, 32]
""",
    )
    study = load_study(path)
    got = values(study, lambda e: (e.precision, e.n_prompts))
    assert got == [
        ("bfloat16", 8),
        ("bfloat16", 16),
        ("bfloat16", 32),
        ("float16", 8),
        ("float16", 16),
        ("float16", 32),
    ]


def test_dotted_sweep_keys_reach_nested_fields(write: Write) -> None:
    """``decoder.temperature`` and ``dataset.input_len`` set fields inside nested sections."""
    path = write(
        "s.yaml",
        TINY
        + """\
decoder: {top_p: 0.9}
sweep:
  decoder.temperature: [0.0, 0.7]
  dataset.input_len: [16, 32]
""",
    )
    study = load_study(path)
    got = values(study, lambda e: (e.decoder.temperature, e.dataset.input_len, e.decoder.top_p))
    assert got == [(0.0, 16, 0.9), (0.0, 32, 0.9), (0.7, 16, 0.9), (0.7, 32, 0.9)]
    assert values(study, lambda e: e.decoder.do_sample) == [False, False, True, True]


def test_scoped_keys_multiply_only_their_backends_experiments(write: Write) -> None:
    """With backend x 2 and pytorch.batch_size x 3, pytorch gets 3 experiments, vllm 1."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  backend: [pytorch, vllm]
  pytorch.batch_size: [1, 4, 8]
""",
    )
    study = load_study(path)
    got = [
        (e.backend, e.concurrency if e.backend == "pytorch" else None) for e in study.experiments
    ]
    assert got == [("pytorch", 1), ("pytorch", 4), ("pytorch", 8), ("vllm", None)]
    assert all(e.pytorch is None for e in study.experiments if e.backend == "vllm")


def test_scoped_keys_of_two_backends_each_multiply_their_own(write: Write) -> None:
    """pytorch.batch_size x 2 and vllm.max_num_seqs x 3 give 2 + 3 experiments per precision."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  backend: [pytorch, vllm]
  precision: [bfloat16, float16]
  pytorch.batch_size: [1, 8]
  vllm.max_num_seqs: [16, 32, 64]
""",
    )
    study = load_study(path)
    assert len(study.experiments) == 2 * (2 + 3)
    vllm_seqs = [e.vllm.max_num_seqs for e in study.experiments if e.vllm is not None]
    assert vllm_seqs == [16, 32, 64, 16, 32, 64]


def test_backend_is_a_sweep_axis(write: Write) -> None:
    """Sweeping ``backend`` gives one experiment per backend, each with its own section."""
    path = write("s.yaml", TINY + "sweep:\n  backend: [pytorch, vllm, tensorrt]\n")
    study = load_study(path)
    assert values(study, lambda e: e.backend) == ["pytorch", "vllm", "tensorrt"]
    assert [type(e.backend_section).__name__ for e in study.experiments] == [
        "PyTorchConfig",
        "VLLMConfig",
        "TensorRTConfig",
    ]


def test_scoped_key_for_an_unused_backend_is_an_error(write: Write) -> None:
    """``vllm.max_num_seqs`` in a pytorch-only study is reported, never silently dropped."""
    path = write("s.yaml", TINY + "sweep:\n  vllm.max_num_seqs: [64, 256]\n")
    text = problems_of(path)
    assert "sweep.vllm.max_num_seqs" in text
    assert "no experiment uses backend 'vllm'" in text


def test_scoped_key_for_a_backend_missing_from_the_backend_sweep_is_an_error(
    write: Write,
) -> None:
    """A tensorrt-scoped key with a backend sweep of pytorch and vllm names the key."""
    path = write(
        "s.yaml",
        TINY + "sweep:\n  backend: [pytorch, vllm]\n  tensorrt.max_batch_size: [8]\n",
    )
    assert "sweep.tensorrt.max_batch_size: no experiment uses backend 'tensorrt'" in problems_of(
        path
    )


@pytest.mark.parametrize(
    ("snippet", "key_path", "suggestion"),
    [
        ("n_promts: 4\n", "n_promts", "'n_prompts'"),
        ("decoder: {temprature: 0.5}\n", "decoder.temprature", "'temperature'"),
        ("sweep:\n  pytorch.bach_size: [1]\n", "sweep.pytorch.bach_size", "'batch_size'"),
        ("sweep:\n  precison: [float16]\n", "sweep.precison", "'precision'"),
        ("experiments:\n  - {modle: tiny-llama}\n", "experiments[0].modle", "'model'"),
    ],
)
def test_unknown_key_is_an_error_with_did_you_mean(
    write: Write, snippet: str, key_path: str, suggestion: str
) -> None:
    """A misspelt key, wherever it is, names its path and suggests the closest real key."""
    text = problems_of(write("s.yaml", TINY + snippet))
    assert f"{key_path}: unknown key" in text
    assert f"did you mean {suggestion}" in text


# --------------------------------------------------------------------------- experiments


def test_experiments_list_entries_merge_over_shared_fields(write: Write) -> None:
    """Each entry keeps the shared fields it does not set and deep-merges nested sections."""
    path = write(
        "s.yaml",
        TINY
        + """\
precision: float16
decoder: {temperature: 0.7, top_p: 0.9}
experiments:
  - {n_prompts: 8}
  - {precision: bfloat16, decoder: {top_p: 0.5}}
""",
    )
    study = load_study(path)
    got = values(
        study, lambda e: (e.n_prompts, e.precision, e.decoder.temperature, e.decoder.top_p)
    )
    assert got == [(8, "float16", 0.7, 0.9), (64, "bfloat16", 0.7, 0.5)]
    assert study.experiment_sources == ["experiments[0]", "experiments[1]"]


def test_grid_and_list_combine_with_the_list_appended(write: Write) -> None:
    """A 2-point grid plus a 2-entry list is 4 experiments, grid first, in file order."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  precision: [bfloat16, float16]
experiments:
  - {n_prompts: 8}
  - {n_prompts: 16, precision: float32}
""",
    )
    study = load_study(path)
    got = values(study, lambda e: (e.precision, e.n_prompts))
    assert got == [("bfloat16", 64), ("float16", 64), ("bfloat16", 8), ("float32", 16)]
    assert study.experiment_sources[0].startswith("sweep point 1")
    assert study.experiment_sources[2:] == ["experiments[0]", "experiments[1]"]


def test_experiments_entry_may_pick_its_own_backend(write: Write) -> None:
    """An entry with ``backend: vllm`` gets a vllm section; the shared pytorch one is dropped."""
    path = write(
        "s.yaml",
        TINY
        + """\
pytorch: {batch_size: 4}
experiments:
  - {}
  - {backend: vllm, vllm: {max_num_seqs: 8}}
""",
    )
    study = load_study(path)
    first, second = study.experiments
    assert first.pytorch is not None and first.pytorch.batch_size == 4
    assert second.pytorch is None and second.vllm is not None
    assert second.vllm.max_num_seqs == 8


# --------------------------------------------------------------------------- base


def test_base_inherits_from_a_file_relative_to_the_study(write: Write) -> None:
    """``base: ../shared/common.yaml`` resolves against the study's folder; the study wins."""
    write("shared/common.yaml", TINY + "precision: float16\nmax_output_tokens: 32\n")
    path = write("studies/s.yaml", "base: ../shared/common.yaml\nprecision: bfloat16\n")
    (exp,) = load_study(path).experiments
    assert (exp.model, exp.precision, exp.max_output_tokens) == ("tiny-llama", "bfloat16", 32)


def test_base_files_nest_and_merge_deeply(write: Write) -> None:
    """A base of a base is inherited too, and nested mappings merge key by key."""
    write("a.yaml", TINY + "decoder: {temperature: 0.5, top_p: 0.8}\n")
    write("sub/b.yaml", "base: ../a.yaml\ndecoder: {top_p: 0.9}\nn_prompts: 32\n")
    path = write("sub/c.yaml", "base: b.yaml\nn_prompts: 16\n")
    (exp,) = load_study(path).experiments
    assert (exp.decoder.temperature, exp.decoder.top_p, exp.n_prompts) == (0.5, 0.9, 16)


def test_base_cycle_is_an_error(write: Write) -> None:
    """Files that inherit from each other in a loop are reported with the whole chain."""
    write("a.yaml", "base: b.yaml\n" + TINY)
    write("b.yaml", "base: a.yaml\n")
    text = problems_of(write("s.yaml", "base: a.yaml\n"))
    assert "'base:' files form a cycle" in text
    assert "a.yaml -> " in text and "b.yaml" in text


def test_base_that_names_itself_is_a_cycle(write: Write) -> None:
    """``base:`` pointing at the file itself is a cycle, not infinite recursion."""
    text = problems_of(write("s.yaml", "base: s.yaml\n" + TINY))
    assert "cycle" in text


def test_base_sweep_is_inherited(write: Write) -> None:
    """A sweep in the base file expands in the inheriting study."""
    write("common.yaml", TINY + "sweep:\n  precision: [bfloat16, float16]\n")
    study = load_study(write("s.yaml", "base: common.yaml\nname: child\n"))
    assert study.name == "child"
    assert values(study, lambda e: e.precision) == ["bfloat16", "float16"]


# --------------------------------------------------------------------------- duplicates


def test_identical_experiments_are_reported_and_run_once(write: Write) -> None:
    """``bf16`` is an alias of ``bfloat16``: the duplicate is listed and planned once."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  precision: [bfloat16, bf16, float16]
experiments:
  - {precision: float16}
execution: {n_cycles: 2}
""",
    )
    study = load_study(path)
    assert values(study, lambda e: e.precision) == ["bfloat16", "float16"]
    assert [(d.source.split(" (")[0], d.same_as.split(" (")[0]) for d in study.duplicates] == [
        ("sweep point 2", "sweep point 1"),
        ("experiments[0]", "sweep point 3"),
    ]
    assert {d.config_hash for d in study.duplicates} == {e.config_hash for e in study.experiments}
    plan = build_plan(study)
    assert len(plan.runs) == 2 * 2
    assert len(plan.notes) == 2 and all("runs once" in n for n in plan.notes)


def test_name_does_not_make_experiments_different(write: Write) -> None:
    """Entries that differ only in their ``name`` label are duplicates."""
    path = write("s.yaml", TINY + "experiments:\n  - {name: a}\n  - {name: b}\n")
    study = load_study(path)
    assert len(study.experiments) == 1
    assert study.duplicates[0].source == "experiments[1]"


# --------------------------------------------------------------------------- single experiment


def test_file_without_sweep_or_experiments_is_one_experiment(write: Write) -> None:
    """A plain experiment file is a degenerate study named after the file."""
    study = load_study(write("just-one.yaml", TINY))
    assert len(study.experiments) == 1
    assert study.name == "just-one"
    assert study.experiment_sources == ["just-one.yaml"]
    assert study.experiments[0].pytorch is not None  # the backend's section is always present


# --------------------------------------------------------------------------- backend sections


def test_section_not_matching_backend_is_an_error(write: Write) -> None:
    """A shared ``vllm:`` section in a pytorch study is reported with the section name."""
    text = problems_of(write("s.yaml", TINY + "backend: pytorch\nvllm: {max_num_seqs: 8}\n"))
    assert "vllm: section does not match" in text


def test_section_not_matching_an_entrys_backend_is_an_error(write: Write) -> None:
    """An entry with ``backend: pytorch`` and a ``tensorrt:`` section is reported."""
    path = write(
        "s.yaml",
        TINY + "experiments:\n  - {backend: pytorch, tensorrt: {max_batch_size: 8}}\n",
    )
    text = problems_of(path)
    assert "experiments[0]" in text
    assert "section 'tensorrt:' does not match backend 'pytorch'" in text


def test_shared_sections_apply_only_to_their_backend_in_a_backend_sweep(write: Write) -> None:
    """With backend swept, the shared pytorch/vllm sections land on their own experiments."""
    path = write(
        "s.yaml",
        TINY
        + """\
sweep:
  backend: [pytorch, vllm]
pytorch: {batch_size: 4, attn_implementation: eager}
vllm: {max_num_seqs: 8, gpu_memory_utilization: 0.5}
""",
    )
    pt, vl = load_study(path).experiments
    assert pt.vllm is None and pt.pytorch is not None
    assert (pt.pytorch.batch_size, pt.pytorch.attn_implementation) == (4, "eager")
    assert vl.pytorch is None and vl.vllm is not None
    assert (vl.vllm.max_num_seqs, vl.vllm.gpu_memory_utilization) == (8, 0.5)


def test_scoped_sweep_merges_with_the_shared_section(write: Write) -> None:
    """``pytorch.batch_size`` swept keeps the other keys of the shared ``pytorch:`` section."""
    path = write(
        "s.yaml",
        TINY + "pytorch: {attn_implementation: eager}\nsweep:\n  pytorch.batch_size: [1, 2]\n",
    )
    got = values(load_study(path), lambda e: (e.pytorch.batch_size, e.pytorch.attn_implementation))
    assert got == [(1, "eager"), (2, "eager")]


# --------------------------------------------------------------------------- overrides


def test_command_line_overrides_win_over_the_study(write: Write) -> None:
    """``overrides`` beat shared fields and experiments entries alike."""
    path = write(
        "s.yaml",
        TINY + "experiments:\n  - {n_prompts: 8}\n  - {n_prompts: 16, precision: float16}\n",
    )
    study = load_study(path, overrides={"n_prompts": 4, "decoder.temperature": 0.3})
    got = values(study, lambda e: (e.n_prompts, e.precision, e.decoder.temperature))
    assert got == [(4, "bfloat16", 0.3), (4, "float16", 0.3)]


def test_overriding_a_swept_key_is_an_error(write: Write) -> None:
    """A command-line value for a sweep axis would erase the axis, so it is refused."""
    path = write("s.yaml", TINY + "sweep:\n  precision: [bfloat16, float16]\n")
    text = problems_of(path, overrides={"precision": "float32"})
    assert "<command line> precision: is a sweep axis" in text


def test_unknown_override_key_is_an_error(write: Write) -> None:
    """A misspelt ``--set`` key is reported as coming from the command line."""
    text = problems_of(write("s.yaml", TINY), overrides={"decoder.temprature": 0.1})
    assert "<command line> decoder.temprature: unknown key" in text
    assert "did you mean 'temperature'" in text


def test_override_error_names_the_command_line(write: Write) -> None:
    """A bad override value is reported against the command line, not the file's key."""
    text = problems_of(write("s.yaml", TINY), overrides={"n_prompts": 0})
    assert "<command line> n_prompts" in text


def test_scoped_override_applies_only_to_its_backend(write: Write) -> None:
    """``--set vllm.max_num_seqs=4`` in a backend sweep changes only the vllm experiment."""
    path = write("s.yaml", TINY + "sweep:\n  backend: [pytorch, vllm]\n")
    pt, vl = load_study(path, overrides={"vllm.max_num_seqs": 4}).experiments
    assert pt.vllm is None
    assert vl.vllm is not None and vl.vllm.max_num_seqs == 4


def test_scoped_override_for_an_unused_backend_is_an_error(write: Write) -> None:
    """A tensorrt-scoped override on a pytorch/vllm study is reported, not dropped."""
    path = write("s.yaml", TINY + "sweep:\n  backend: [pytorch, vllm]\n")
    text = problems_of(path, overrides={"tensorrt.max_batch_size": 4})
    assert "<command line> tensorrt.max_batch_size: no experiment uses backend 'tensorrt'" in text


def test_backend_override_switches_the_backend_of_a_plain_study(write: Write) -> None:
    """``--backend vllm`` on a study without backend sections gives a vllm experiment."""
    (exp,) = load_study(write("s.yaml", TINY), overrides={"backend": "vllm"}).experiments
    assert exp.backend == "vllm" and exp.vllm is not None and exp.pytorch is None


def test_backend_override_reports_the_now_unused_section(write: Write) -> None:
    """``--backend vllm`` on a study with a ``pytorch:`` section names that section."""
    path = write("s.yaml", TINY + "pytorch: {batch_size: 4}\n")
    text = problems_of(path, overrides={"backend": "vllm"})
    assert "pytorch: section does not match any experiment's backend (vllm)" in text


def test_entry_name_labels_the_experiment(write: Write) -> None:
    """``name:`` inside an experiments entry is that experiment's label, not a study key."""
    path = write("s.yaml", TINY + "experiments:\n  - {name: small, n_prompts: 8}\n")
    (exp,) = load_study(path).experiments
    assert exp.name == "small"


def test_non_mapping_value_is_not_replaced_by_a_dotted_sweep(write: Write) -> None:
    """``decoder: 5`` with a ``decoder.temperature`` sweep is reported, not silently fixed."""
    path = write("s.yaml", TINY + "decoder: 5\nsweep:\n  decoder.temperature: [0.0, 0.5]\n")
    assert "decoder: Input should be a valid dictionary" in problems_of(path)


# --------------------------------------------------------------------------- paths and formats


def test_relative_jsonl_dataset_resolves_against_the_study_file(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dataset.path: data/p.jsonl`` is found next to the study, whatever the cwd."""
    data = write("proj/data/p.jsonl", '{"prompt": "hi"}\n')
    path = write(
        "proj/s.yaml",
        TINY + "tokenizer: gpt2\ndataset: {source: jsonl, path: data/p.jsonl}\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (exp,) = load_study(path).experiments
    assert exp.dataset.source == "jsonl"
    assert Path(exp.dataset.path) == data.resolve()


def test_relative_model_directory_resolves_against_the_study_file(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``model: ./my-model`` (a folder with config.json) is made absolute; its shape is read."""
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
    }
    cfg = write("proj/my-model/config.json", json.dumps(hf_config))
    path = write("proj/s.yaml", "model: ./my-model\nload_format: dummy\nn_prompts: 4\n")
    monkeypatch.chdir(tmp_path)
    study = load_study(path)
    (exp,) = study.experiments
    assert Path(exp.model) == cfg.parent.resolve()
    assert build_plan(study).experiments[0].estimate.parameter_count is not None


def test_json_study_files_load_like_yaml(write: Write) -> None:
    """A ``.json`` study with a sweep expands exactly as the same YAML would."""
    doc = {
        "name": "js",
        "model": "tiny-llama",
        "load_format": "dummy",
        "n_prompts": 64,
        "sweep": {"pytorch.batch_size": [1, 2]},
    }
    js = load_study(write("s.json", json.dumps(doc)))
    ym = load_study(write("s.yaml", "name: js\n" + TINY + "sweep:\n  pytorch.batch_size: [1, 2]\n"))
    assert js.name == "js"
    assert values(js, lambda e: e.config_hash) == values(ym, lambda e: e.config_hash)


# --------------------------------------------------------------------------- user defaults

USER_DEFAULTS = """\
results_dir: /tmp/user-results
runner: local
images: {vllm: registry.example/llem-vllm:user}
cuda_major: 13
pull_policy: never
config_gap_s: 7
cycle_gap_s: 9
energy_sampler: zeus
carbon: {grid_gco2_per_kwh: 321, pue: 1.3}
cost: {price_per_kwh: 0.4, currency: GBP}
"""

#: Every key of the user defaults file, and where a dry-run JSON plan shows it.
USER_KEY_CHECKS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "results_dir": lambda p: p["results_dir"],
    "runner": lambda p: p["runner"]["runner"],
    "images": lambda p: p["runner"]["images"],
    "cuda_major": lambda p: p["runner"]["cuda_major"],
    "pull_policy": lambda p: p["runner"]["pull_policy"],
    "config_gap_s": lambda p: p["execution"]["config_gap_s"],
    "cycle_gap_s": lambda p: p["execution"]["cycle_gap_s"],
    "energy_sampler": lambda p: p["experiments"][0]["config"]["energy"]["sampler"],
    "carbon": lambda p: p["impact"]["carbon"],
    "cost": lambda p: p["impact"]["cost"],
}


def dry_run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["run", *args, "--dry-run", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc: dict[str, Any] = json.loads(out.out)
    return doc


def test_user_defaults_cover_every_key_of_the_file() -> None:
    """The table below checks every field UserDefaults has, so none can go unused."""
    assert set(USER_KEY_CHECKS) == set(UserDefaults.model_fields)


def test_every_user_default_is_used(
    write: Write, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each key of the LLEM_USER_CONFIG file shows in the plan of a study silent on it."""
    user = write("user.yaml", USER_DEFAULTS)
    monkeypatch.setenv(ENV_USER_CONFIG, str(user))
    study = write("s.yaml", TINY + "backend: vllm\n")
    plan = dry_run_json(capsys, str(study))
    expected = {
        "results_dir": "/tmp/user-results",
        "runner": "local",
        "images": {"vllm": "registry.example/llem-vllm:user"},
        "cuda_major": 13,
        "pull_policy": "never",
        "config_gap_s": 7.0,
        "cycle_gap_s": 9.0,
        "energy_sampler": "zeus",
        "carbon": {"grid_gco2_per_kwh": 321.0, "pue": 1.3},
        "cost": {"price_per_kwh": 0.4, "currency": "GBP"},
    }
    assert {k: get(plan) for k, get in USER_KEY_CHECKS.items()} == expected
    assert plan["experiments"][0]["image"] == "registry.example/llem-vllm:user"


def test_user_cuda_major_picks_the_default_image_tag(
    write: Write, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cuda_major: 13`` in the user file makes the default pytorch image a cuda13 tag."""
    monkeypatch.setenv(ENV_USER_CONFIG, str(write("user.yaml", "cuda_major: 13\n")))
    plan = dry_run_json(capsys, str(write("s.yaml", TINY)))
    assert plan["experiments"][0]["image"].endswith("-cuda13")


def test_study_file_beats_user_defaults(
    write: Write, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every key the study file also sets takes the study's value over the user's."""
    monkeypatch.setenv(ENV_USER_CONFIG, str(write("user.yaml", USER_DEFAULTS)))
    study = write(
        "s.yaml",
        TINY
        + """\
backend: vllm
energy: {sampler: nvml}
results_dir: /tmp/study-results
runner: docker
images: {vllm: study/vllm:1}
cuda_major: 12
pull_policy: always
execution: {config_gap_s: 1, cycle_gap_s: 2}
carbon: {grid_gco2_per_kwh: 50}
cost: {price_per_kwh: 0.1, currency: EUR}
""",
    )
    plan = dry_run_json(capsys, str(study))
    assert {k: get(plan) for k, get in USER_KEY_CHECKS.items()} == {
        "results_dir": "/tmp/study-results",
        "runner": "docker",
        "images": {"vllm": "study/vllm:1"},
        "cuda_major": 12,
        "pull_policy": "always",
        "config_gap_s": 1.0,
        "cycle_gap_s": 2.0,
        "energy_sampler": "nvml",
        # key by key: the study's grid intensity, the user's PUE (the study gives none)
        "carbon": {"grid_gco2_per_kwh": 50.0, "pue": 1.3},
        "cost": {"price_per_kwh": 0.1, "currency": "EUR"},
    }


def test_user_images_merge_with_study_images(
    write: Write, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study's ``images:`` overrides the user's per backend and keeps the other backends."""
    monkeypatch.setenv(
        ENV_USER_CONFIG, str(write("user.yaml", "images: {vllm: u/vllm, pytorch: u/pt}\n"))
    )
    plan = dry_run_json(capsys, str(write("s.yaml", TINY + "images: {pytorch: s/pt}\n")))
    assert plan["runner"]["images"] == {"vllm": "u/vllm", "pytorch": "s/pt"}


def test_command_line_beats_study_and_user(
    write: Write, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--results-dir, --runner, --no-gaps and --set win over both the study and the user file."""
    monkeypatch.setenv(ENV_USER_CONFIG, str(write("user.yaml", USER_DEFAULTS)))
    study = write(
        "s.yaml",
        TINY
        + "energy: {sampler: nvml}\nresults_dir: /tmp/study-results\nrunner: docker\n"
        + "execution: {config_gap_s: 1, cycle_gap_s: 2}\n",
    )
    plan = dry_run_json(
        capsys,
        str(study),
        "--results-dir",
        "/tmp/cli-results",
        "--runner",
        "auto",
        "--no-gaps",
        "--set",
        "energy.sampler=codecarbon",
    )
    assert plan["results_dir"] == "/tmp/cli-results"
    assert plan["runner"]["runner"] == "auto"
    assert (plan["execution"]["config_gap_s"], plan["execution"]["cycle_gap_s"]) == (0.0, 0.0)
    assert plan["experiments"][0]["config"]["energy"]["sampler"] == "codecarbon"


def test_built_in_defaults_apply_without_a_user_file(
    write: Write, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the user file disabled, the plan shows the built-in defaults."""
    plan = dry_run_json(capsys, str(write("s.yaml", TINY)))
    assert plan["results_dir"] == str(Path.cwd() / "results")  # ./results, made absolute
    assert plan["runner"]["runner"] == "auto"
    assert plan["runner"]["pull_policy"] == "missing"
    assert (plan["execution"]["config_gap_s"], plan["execution"]["cycle_gap_s"]) == (60.0, 120.0)
    assert plan["experiments"][0]["config"]["energy"]["sampler"] == "auto"


def test_user_energy_sampler_does_not_beat_a_swept_sampler(write: Write) -> None:
    """A study that sweeps energy.sampler keeps its values over the user's default."""
    path = write("s.yaml", TINY + 'sweep:\n  energy.sampler: [nvml, "null"]\n')
    study = load_study(path, user=UserDefaults(energy_sampler="zeus"))
    assert values(study, lambda e: e.energy.sampler) == ["nvml", "null"]


def test_user_defaults_file_errors_name_the_file_and_key(write: Write) -> None:
    """A bad value in the user file is a ConfigError naming that file and the key."""
    path = write("user.yaml", "runner: kubernetes\n")
    with pytest.raises(ConfigError) as info:
        load_user_defaults(path)
    assert str(path) in str(info.value)
    assert "runner" in str(info.value)


def test_user_config_env_var_can_disable_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty LLEM_USER_CONFIG means no user file at all."""
    from llenergymeasure.config.user import user_config_path

    assert user_config_path({ENV_USER_CONFIG: ""}) is None
    assert user_config_path({ENV_USER_CONFIG: "/x/y.yaml"}) == Path("/x/y.yaml")
    assert user_config_path({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/llenergymeasure/config.yaml")
