"""vLLM's LoRA gauge as the fakes keep and serve it, in the format of **vLLM 0.26.0**.

What the real engine does (``vllm/v1/metrics/loggers.py`` ``PrometheusStatLogger``, registered
only when LoRA is enabled, and ``vllm/v1/metrics/stats.py`` ``LoRARequestStates``): at every
engine step with outputs, ``record()`` sets::

    vllm:lora_requests_info{max_lora=N, running_lora_adapters=A, waiting_lora_adapters=B}

to the current wall-clock time (``set_to_current_time``), where ``A`` and ``B`` are the
comma-joined names of the adapters with a request in the engine. 0.26 puts every such adapter in
both (``update_scheduler_stats`` writes both dicts for each adapter it tracks), so ``A == B``.
A label set seen again updates its series; every set ever seen stays in ``/metrics``.
:class:`LoraGauge` keeps the series the same way; :meth:`LoraGauge.exposition` writes them as
``prometheus_client.generate_latest`` does (labels sorted, Go-style floats), and
:meth:`LoraGauge.reader_metrics` returns them as ``LLM.get_metrics()`` does
(``vllm.v1.metrics.reader.Gauge``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NAME = "vllm:lora_requests_info"
HELP = f"# HELP {NAME} Running stats on lora requests."
TYPE = f"# TYPE {NAME} gauge"


@dataclass
class Metric:
    """``vllm.v1.metrics.reader.Metric``."""

    name: str
    labels: dict[str, str]


@dataclass
class Gauge(Metric):
    """``vllm.v1.metrics.reader.Gauge``."""

    value: float


def go_float(value: float) -> str:
    """A sample value as ``prometheus_client`` writes it (``floatToGoString``): Go switches to
    an exponent sooner than Python, so 1789828498.802105 is ``1.789828498802105e+09``."""
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


class LoraGauge:
    """The gauge's series: ``(max_lora, running, waiting)`` -> last time set."""

    def __init__(self, max_lora: int, clock: Callable[[], float] = time.time) -> None:
        self.max_lora = max_lora
        self._clock = clock
        self.series: dict[tuple[str, str, str], float] = {}

    def record(self, in_engine: Iterable[str]) -> None:
        """One engine step: ``in_engine`` are the adapters of the requests still in the engine
        (waiting or running), in the order the engine first saw them."""
        names = ",".join(dict.fromkeys(in_engine))
        key = (str(self.max_lora), names, names)
        value = self._clock()
        previous = max(self.series.values(), default=None)
        if previous is not None and value <= previous:  # a fake clock that did not move
            value = previous + 1e-6
        self.series[key] = value

    def exposition(self) -> str:
        """The gauge's lines of ``GET /metrics``."""
        lines = [HELP, TYPE]
        for (max_lora, running, waiting), value in self.series.items():
            labels = (
                f'max_lora="{max_lora}",running_lora_adapters="{running}",'
                f'waiting_lora_adapters="{waiting}"'
            )
            lines.append(f"{NAME}{{{labels}}} {go_float(value)}")
        return "\n".join(lines) + "\n"

    def reader_metrics(self) -> list[Gauge]:
        """The series as ``LLM.get_metrics()`` returns them."""
        return [
            Gauge(
                name=NAME,
                labels={
                    "max_lora": max_lora,
                    "waiting_lora_adapters": waiting,
                    "running_lora_adapters": running,
                },
                value=value,
            )
            for (max_lora, running, waiting), value in self.series.items()
        ]


__all__ = ["HELP", "NAME", "TYPE", "Gauge", "LoraGauge", "Metric", "go_float"]
