"""Steady-state windows: why one is unusable, the two rules' thresholds, and ML.ENERGY's figures.

A run reports two steady-state windows of a continuous-batching engine (see
``docs/methodology.md``, "Steady state"):

* ours (``ExperimentResult.steady_state``): ML.ENERGY's window (opens when ``K`` requests have
  their first token, closes when ``N - K - 1`` have finished) with ``K`` the batch the run keeps
  full (a closed loop's users), judged by the thresholds of ML.ENERGY's benchmark validator
  (ml-energy/benchmark ``scripts/validate_results.py``: at least 30 s) and a batch at least
  80 % full; an open-loop run uses its own window (first request done .. last arrival);
* ML.ENERGY's (``ExperimentResult.steady_state_mlenergy``): the same window with ``K`` =
  ``max_num_seqs`` (:attr:`ExperimentConfig.concurrency`) for every run, judged as their data
  toolkit judges a published run (ml-energy/data ``mlenergy_data/records/runs.py``,
  ``_llm_stability_status``): unstable when the window is under 20 s, its energy per token is
  missing or not positive, or the average running batch is under 85 % of ``max_num_seqs``.

Why a window is unusable is a :class:`WindowProblem`, never text to parse.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Our rule: shorter windows are invalid (ML.ENERGY's benchmark validator, >= 30 s).
MIN_DURATION_S = 30.0
#: Our rule: a mean running batch under this fraction of K is invalid.
MIN_FILL_FRACTION = 0.8
#: ML.ENERGY's data toolkit: a steady state under 20 s is unstable.
MLENERGY_MIN_DURATION_S = 20.0
#: ML.ENERGY's data toolkit: an average running batch under 85 % of max_num_seqs is unstable.
MLENERGY_MIN_BATCH_FRACTION = 0.85


class WindowProblem(str, Enum):
    """Why a steady-state window is unusable (several may hold at once)."""

    TOO_FEW_REQUESTS = "too_few_requests"  # N - K - 1 < 1, or too few arrival times
    NO_FIRST_TOKENS = "no_first_tokens"  # fewer than K requests report a first token
    NEVER_FULL = "never_full"  # the window would close before it opens
    ARRIVALS_ENDED_EARLY = "arrivals_ended_early"  # open loop: last arrival before first finish
    TOO_SHORT = "too_short"  # shorter than the rule's minimum duration
    UNDERFILLED = "underfilled"  # mean running batch under the rule's fraction of K
    NO_ENERGY = "no_energy"  # ML.ENERGY: no positive energy per token in the window

    def __str__(self) -> str:
        return self.value


class _Model(BaseModel):
    # Enum members are stored as their values, so dumps and flat exports carry plain strings.
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class MLEnergySteadyState(_Model):
    """ML.ENERGY's steady-state window and stability rule applied to this run (module doc).

    Attributes:
        max_num_seqs: ``K`` of the window (the experiment's concurrency).
        start_s: When the ``K``-th request got its first token (harness clock), or None.
        end_s: When the ``(N - K - 1)``-th request finished, or None.
        duration_s: ``end_s - start_s``.
        output_tokens: Output tokens produced inside the window (per-token timestamps).
        gpu_energy_j: GPU energy over the window, or None when not measured.
        j_per_output_token: ``gpu_energy_j / output_tokens``: the figure ML.ENERGY publishes.
        output_tokens_per_s: ``output_tokens / duration_s``.
        avg_running_batch: Time-averaged requests between first token and end in the window.
        stable: True when none of ``problems`` holds.
        problems: Why the toolkit would drop the run.
    """

    max_num_seqs: int
    start_s: float | None = None
    end_s: float | None = None
    duration_s: float | None = None
    output_tokens: int | None = None
    gpu_energy_j: float | None = None
    j_per_output_token: float | None = None
    output_tokens_per_s: float | None = None
    avg_running_batch: float | None = None
    stable: bool
    problems: list[WindowProblem] = Field(default_factory=list)


class InputTruncation(_Model):
    """Prompts of a text or chat dataset cut to fit ``max_input_tokens``.

    Attributes:
        side: ``right`` (text: the end is cut) or ``left`` (chat: the start of the conversation
            is cut, the last question stays).
        truncated_requests: Requests whose prompt was cut.
        truncated_input_tokens: Prompt tokens cut, over all requests.
    """

    side: Literal["left", "right"]
    truncated_requests: int
    truncated_input_tokens: int


__all__ = [
    "MIN_DURATION_S",
    "MIN_FILL_FRACTION",
    "MLENERGY_MIN_BATCH_FRACTION",
    "MLENERGY_MIN_DURATION_S",
    "InputTruncation",
    "MLEnergySteadyState",
    "WindowProblem",
]
