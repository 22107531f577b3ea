"""Fakes for tests without a GPU: :class:`FakeNvml`, :class:`ManualClock`, :class:`FakeBackend`."""

from llenergymeasure_harness.testing.fake_backend import FakeBackend
from llenergymeasure_harness.testing.fake_nvml import FakeNvml, ManualClock

__all__ = ["FakeBackend", "FakeNvml", "ManualClock"]
