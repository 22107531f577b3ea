"""Every Python block of docs/results.md runs as written, from a folder holding ``results/``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.analysis.conftest import REPO, llem_env

DOC = REPO / "docs" / "results.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


def test_docs_results_python_blocks_run(tmp_path: Path) -> None:
    """Each ```python block (the documented library use) exits 0 on the committed CPU study."""
    assert BLOCKS, "docs/results.md has no python block"
    for study in (REPO / "docs" / "studies").glob("*/"):
        shutil.copytree(study, tmp_path / "results" / study.name)
    for i, code in enumerate(BLOCKS):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=llem_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"block {i + 1}:\n{code}\n{done.stderr[-3000:]}"
    assert (tmp_path / "report.html").is_file() and (tmp_path / "my-dataset").is_dir()
