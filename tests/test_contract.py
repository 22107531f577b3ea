"""The contract package: what host and harness share, and nothing of either side.

The harness imports only the contract (never a host module), the contract only pydantic, and
the three distributions carry one version; the host's import paths are the contract's classes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import llenergymeasure_contract
from llenergymeasure_contract import CONTRACT_VERSION, REGISTRY, __version__

ROOT = Path(__file__).resolve().parents[1]

#: Harness modules that import without an engine or a GPU library.
HARNESS_MODULES = (
    "llenergymeasure_harness",
    "llenergymeasure_harness.__main__",
    "llenergymeasure_harness.cli",
    "llenergymeasure_harness.experiment",
    "llenergymeasure_harness.backends",
    "llenergymeasure_harness.backends.engine_common",
    "llenergymeasure_harness.backends.steady_state",
    "llenergymeasure_harness.backends.pytorch",
    "llenergymeasure_harness.backends.vllm",
    "llenergymeasure_harness.backends.tensorrt",
    "llenergymeasure_harness.environment",
    "llenergymeasure_harness.prompts",
    "llenergymeasure_harness.metrics",
    "llenergymeasure_harness.quality",
    "llenergymeasure_harness.warmup",
    "llenergymeasure_harness.outputs",
    "llenergymeasure_harness.energy",
    "llenergymeasure_harness.traffic",
    "llenergymeasure_harness.serving.backends",
    "llenergymeasure_harness.serving.client",
    "llenergymeasure_harness.serving.server",
)
CONTRACT_MODULES = tuple(
    f"llenergymeasure_contract.{p.stem}"
    for p in sorted((ROOT / "contract" / "llenergymeasure_contract").glob("*.py"))
    if p.stem != "__init__"
)


def _imported_after(modules: tuple[str, ...]) -> set[str]:
    """Top-level names in ``sys.modules`` after importing ``modules`` in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(proc.stdout.split())


def test_harness_imports_no_host_module() -> None:
    """Importing every harness module loads no ``llenergymeasure.`` host module, nor the host's
    own dependencies (the docker SDK, rich, typer)."""
    loaded = _imported_after(HARNESS_MODULES)
    host = sorted(m for m in loaded if m == "llenergymeasure" or m.startswith("llenergymeasure."))
    assert host == [], f"the harness imported host modules: {host}"
    assert not {"docker", "rich", "typer"} & loaded


def test_contract_depends_on_pydantic_only() -> None:
    """The contract's modules import the standard library, pydantic and its own helpers only."""
    bare = {m.split(".")[0] for m in _imported_after(())}  # what site start-up loads anyway
    loaded = {m.split(".")[0] for m in _imported_after(CONTRACT_MODULES)} - bare
    stdlib = {*sys.stdlib_module_names, "_sysconfigdata"}
    third_party = {m for m in loaded if m.split("__")[0] not in stdlib and m not in stdlib}
    third_party -= {"llenergymeasure_contract"}
    pydantic_family = {"pydantic", "pydantic_core", "typing_extensions", "annotated_types"}
    assert third_party - pydantic_family - {"typing_inspection"} == set(), third_party


def test_three_distributions_one_version() -> None:
    """The contract, harness and host pyprojects carry the contract's version and pin each
    other to exactly that version, so a release publishes matching distributions."""
    texts = {
        name: (ROOT / folder / "pyproject.toml").read_text()
        for name, folder in (("host", "."), ("harness", "harness"), ("contract", "contract"))
    }
    for name in ("host", "harness"):
        assert re.search(rf'^version = "{re.escape(__version__)}"', texts[name], re.M), name
        pins = re.findall(
            r'"llenergymeasure-(?:contract|harness)(?:\[[a-z]+\])?==([^"]+)"', texts[name]
        )
        assert pins and set(pins) == {__version__}, (name, pins)
    assert 'attr = "llenergymeasure_contract._version.__version__"' in texts["contract"]
    host_deps = texts["host"].split("dependencies = [", 1)[1].split("]", 1)[0]
    assert "llenergymeasure-contract==" in host_deps and "llenergymeasure-harness==" in host_deps


def test_host_import_paths_are_the_contract_definitions() -> None:
    """``llenergymeasure.config``, ``.results``, ``.contract`` and ``.errors`` re-export the
    contract's single definitions (no second copy of any class)."""
    import llenergymeasure
    import llenergymeasure.contract
    import llenergymeasure.errors
    from llenergymeasure.config import ExperimentConfig, PyTorchConfig
    from llenergymeasure.results import ExperimentResult, HarnessErrorRecord

    c = llenergymeasure_contract
    assert ExperimentConfig is c.ExperimentConfig is llenergymeasure.ExperimentConfig
    assert ExperimentResult is c.ExperimentResult
    assert HarnessErrorRecord is c.HarnessErrorRecord
    assert PyTorchConfig is c.REGISTRY.get("pytorch").section
    assert llenergymeasure.contract.HarnessEnv is c.HarnessEnv
    assert llenergymeasure.contract.RESULT_FILE == c.RESULT_FILE == "result.json"
    assert llenergymeasure.errors.LLEMError is c.LLEMError
    assert llenergymeasure.__version__ == c.__version__


def test_contract_all_is_sorted_and_complete() -> None:
    """The contract's ``__all__`` is sorted (constants, classes, then functions: ruff's
    isort-style order), unique, and every name in it resolves."""
    names = llenergymeasure_contract.__all__

    def kind(name: str) -> tuple[int, str]:
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert names == sorted(names, key=kind) and len(names) == len(set(names))
    for name in names:
        assert hasattr(llenergymeasure_contract, name), name


def test_harness_engines_are_the_registry_names() -> None:
    """The harness has one engine per registered backend, under the same name (plus the
    server-mode driver, which runs any of them behind HTTP)."""
    from llenergymeasure_harness.backends import ENGINES

    assert set(REGISTRY.names()) <= set(ENGINES)
    assert set(ENGINES) - set(REGISTRY.names()) == {"server"}


def test_harness_version_names_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m llenergymeasure_harness --version`` prints the release and contract version."""
    from llenergymeasure_harness.cli import main

    with pytest.raises(SystemExit):
        main(["--version"], {})
    assert capsys.readouterr().out.strip() == (
        f"llenergymeasure_harness {__version__} (contract {CONTRACT_VERSION})"
    )
