"""The harness's public surface: __all__ complete and sorted, NVML imported in one module."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import llenergymeasure_harness


@pytest.mark.parametrize(
    "module",
    [
        "llenergymeasure_harness",
        "llenergymeasure_harness.energy",
        "llenergymeasure_harness.testing",
        "llenergymeasure_harness.backends",
    ],
)
def test_all_is_sorted_and_resolves(module: str) -> None:
    """Every name in __all__ exists, and __all__ is sorted."""
    mod = importlib.import_module(module)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), name


def test_pynvml_imported_in_one_module_only() -> None:
    """Only energy/nvml.py imports pynvml (the one NVML boundary)."""
    root = Path(llenergymeasure_harness.__file__).parent
    importers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "import pynvml" in p.read_text(encoding="utf-8")
    )
    assert importers == ["energy/nvml.py"]


def test_importing_the_harness_does_not_import_torch_or_pynvml() -> None:
    """No import-time side effects: GPU libraries load only when used."""
    import subprocess
    import sys

    code = (
        "import sys, llenergymeasure_harness, llenergymeasure_harness.cli;"
        "print(any(m in sys.modules for m in ('torch', 'pynvml', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
