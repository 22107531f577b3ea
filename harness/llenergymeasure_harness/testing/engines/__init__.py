"""Fake inference-engine packages for contract tests: :class:`FakeVLLM` and :class:`FakeTRTLLM`.

Each fake mirrors one upstream release's signatures and return shapes at the boundary the
harness backends use (named in each module's docstring) and installs itself into
``sys.modules`` with ``with Fake...().installed():``. Time comes from a shared
:class:`FakeClock` so recorded timestamps are exact.
"""

from llenergymeasure_harness.testing.engines._sim import FakeClock
from llenergymeasure_harness.testing.engines.fake_tensorrt_llm import (
    FakeTRTLLM,
    FakeTRTLLMBehaviour,
)
from llenergymeasure_harness.testing.engines.fake_vllm import FakeVLLM, FakeVLLMBehaviour

__all__ = ["FakeClock", "FakeTRTLLM", "FakeTRTLLMBehaviour", "FakeVLLM", "FakeVLLMBehaviour"]
