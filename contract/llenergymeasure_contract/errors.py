"""One error hierarchy for llenergymeasure.

::

    LLEMError                      exit 1 unless a subclass says otherwise
     ├── ConfigError               bad study/experiment input            → exit 2
     ├── UsageError                bad command-line usage                → exit 2
     ├── PreflightError            host not ready (Docker, GPUs, images)  → exit 1
     ├── RunnerError               a runner could not run an experiment  → exit 1
     ├── StorageError              writing the study's files failed      → exit 1
     ├── ExperimentError           an experiment ran and failed          → exit 1
     │    └── MeasurementError     the measurement itself is unusable    → exit 1
     └── InterruptedStudy          Ctrl-C / SIGTERM; the manifest saved  → exit 130 / 143

Third-party errors (pydantic, yaml, docker, NVML) are translated into these at one boundary
with ``raise ... from exc``; callers branch on these classes only.
"""

from __future__ import annotations


class LLEMError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class ConfigError(LLEMError):
    """A study or experiment configuration is invalid.

    Attributes:
        source: The file the problem is in (or ``"<command line>"``), if known.
        problems: One line per problem, each naming the key path.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        problems: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.problems = list(problems or [])
        super().__init__(message, hint=hint)

    def __str__(self) -> str:
        head = f"{self.source}: {self.message}" if self.source else self.message
        lines = [head, *(f"  - {p}" for p in self.problems)]
        if self.hint:
            lines.append(f"  fix: {self.hint}")
        return "\n".join(lines)


class UsageError(LLEMError):
    """The command line is wrong (conflicting or missing options)."""

    exit_code = 2


class PreflightError(LLEMError):
    """The host is not ready to run the study; every problem found is listed."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = list(problems)
        message = "preflight checks failed:\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message, hint=hint)


class RunnerError(LLEMError):
    """A runner (Docker or local) could not start or supervise an experiment."""


class StorageError(LLEMError):
    """Writing the study's files failed (disk full, permissions, a vanished mount).

    Attributes:
        path: The file or directory that could not be written.
    """

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class ExperimentError(LLEMError):
    """An experiment ran but failed (harness error, OOM, timeout, missing result)."""


class MeasurementError(ExperimentError):
    """A measurement could not be taken or is not trustworthy."""


class InterruptedStudy(LLEMError):
    """The user interrupted the study; completed results and the manifest are saved.

    ``exit_code`` is 130 for Ctrl-C (SIGINT) and 143 for SIGTERM.
    """

    exit_code = 130

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 130) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


__all__ = [
    "ConfigError",
    "ExperimentError",
    "InterruptedStudy",
    "LLEMError",
    "MeasurementError",
    "PreflightError",
    "RunnerError",
    "StorageError",
    "UsageError",
]
