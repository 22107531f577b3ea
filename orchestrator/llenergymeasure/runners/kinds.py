"""Load-time rules that depend on the runner kind.

They live with the runners so that no module outside ``runners/`` branches on the kind of
runner (docs/architecture.md): the study loader asks these functions instead.
"""

from __future__ import annotations

#: The runner whose settings the ``slurm:`` section holds.
SLURM = "slurm"
#: The runner that runs the harness in this Python (its engine modules must import here).
LOCAL = "local"


def section_problems(chosen: object, sections: set[str]) -> list[str]:
    """Problems with runner sections that the chosen runner would silently ignore."""
    if SLURM in sections and isinstance(chosen, str) and chosen != SLURM:
        return [
            f"slurm: the section applies to runner: slurm only, but the runner is "
            f"{chosen}; set runner: slurm (or --runner slurm), or remove the section"
        ]
    return []


def runs_in_this_python(runner: str) -> bool:
    """True when the runner imports the harness's engine modules from this interpreter."""
    return runner == LOCAL
