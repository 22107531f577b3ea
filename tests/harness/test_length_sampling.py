"""Request-length distributions: each is what it says over 20,000 seeded draws, the built-in
profiles reproduce their published statistics, every backend gets the same lengths, and the
fake vLLM / TensorRT-LLM engines produce each request's own length exactly.

Tolerances: means and quantiles within 3 % (p99 within 6 %) of the definition. At n = 20,000
the standard error of a mean is under 1 % of it for every distribution here (exponential:
1/sqrt(n) = 0.7 %), so 3 % is over four standard errors; a p99 rests on ~200 draws, hence 6 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llenergymeasure.config import ExperimentConfig
from llenergymeasure_contract.lengths import (
    EmpiricalLengths,
    ExponentialLengths,
    LognormalLengths,
    NormalLengths,
    ParetoLengths,
    UniformLengths,
    builtin_profile,
    builtin_profiles,
)
from llenergymeasure_harness.backends.base import GenerationRequest
from llenergymeasure_harness.backends.tensorrt import TensorRTBackend
from llenergymeasure_harness.backends.vllm import VLLMBackend
from llenergymeasure_harness.lengths import (
    length_rng,
    length_stats,
    sample_lengths,
    workload_outcome,
)
from llenergymeasure_harness.prompts import build_requests
from llenergymeasure_harness.testing.engines import (
    FakeTRTLLM,
    FakeTRTLLMBehaviour,
    FakeVLLM,
    FakeVLLMBehaviour,
)

N = 20_000
BIG = 10**6


def _draw(spec: Any, cap: int = BIG, seed: int = 7) -> np.ndarray[Any, Any]:
    return np.asarray(sample_lengths(spec, N, length_rng(seed, "output_len"), cap), dtype=float)


def _close(got: float, want: float, rel: float = 0.03) -> None:
    assert got == pytest.approx(want, rel=rel), (got, want)


def test_uniform_covers_its_range_evenly() -> None:
    """uniform [10, 50]: every integer in range, mean 30, stddev (41^2 - 1)/12 squared-rooted."""
    a = _draw(UniformLengths(dist="uniform", min=10, max=50))
    assert a.min() == 10 and a.max() == 50
    assert set(np.unique(a)) == set(range(10, 51))
    _close(a.mean(), 30.0)
    _close(a.std(), math.sqrt((41**2 - 1) / 12))


def test_normal_has_its_mean_and_stddev() -> None:
    """normal mean 300 sd 50: sample mean and stddev within 3 %."""
    a = _draw(NormalLengths(dist="normal", mean=300, stddev=50))
    _close(a.mean(), 300.0)
    _close(a.std(), 50.0)


def test_lognormal_is_given_by_the_lengths_mean_and_stddev() -> None:
    """lognormal mean 200 sd 100 (of the lengths): mean, stddev and median exp(mu) match."""
    spec = LognormalLengths(dist="lognormal", mean=200, stddev=100)
    a = _draw(spec)
    mu, _ = spec.mu_sigma()
    _close(a.mean(), 200.0)
    _close(a.std(), 100.0, rel=0.05)
    _close(float(np.median(a)), math.exp(mu))


def test_pareto_quantiles_follow_type_one_with_the_mean() -> None:
    """pareto mean 500 shape 2.5 (x_m = 300): p_q = 300 (1 - q)^(-1/2.5), nothing below 300."""
    a = _draw(ParetoLengths(dist="pareto", mean=500, shape=2.5))
    assert a.min() >= 300
    for q in (0.5, 0.9):
        _close(float(np.quantile(a, q)), 300 * (1 - q) ** (-1 / 2.5))
    _close(float(np.quantile(a, 0.99)), 300 * 0.01 ** (-1 / 2.5), rel=0.06)
    _close(a.mean(), 500.0, rel=0.05)  # heavy tail: the mean converges slowly


def test_exponential_has_its_mean_and_quantiles() -> None:
    """exponential mean 300: mean 300, median 300 ln 2, p90 300 ln 10."""
    a = _draw(ExponentialLengths(dist="exponential", mean=300))
    _close(a.mean(), 300.0)
    _close(float(np.median(a)), 300 * math.log(2))
    _close(float(np.quantile(a, 0.9)), 300 * math.log(10))


def test_empirical_histogram_reproduces_bin_shares() -> None:
    """A histogram's bins get their share of draws, spread inside each bin."""
    spec = EmpiricalLengths(dist="empirical", bins=[1, 101, 201, 401], counts=[1, 2, 1])
    a = _draw(spec)
    shares = np.histogram(a, bins=[0.5, 100.5, 200.5, 401])[0] / N
    np.testing.assert_allclose(shares, [0.25, 0.5, 0.25], atol=0.015)
    assert len(np.unique(a[a > 200])) > 100  # uniform inside the bin, not the edge


def test_empirical_values_reproduce_their_weights() -> None:
    """Point masses come out in proportion to their counts."""
    a = _draw(EmpiricalLengths(dist="empirical", values=[5, 50], counts=[3, 1]))
    assert set(np.unique(a)) == {5.0, 50.0}
    _close(float((a == 5).mean()), 0.75)


def test_draws_are_clipped_to_bounds_and_cap() -> None:
    """Draws past max (or the cap) pile up at it; below min at min: clipped, not redrawn."""
    spec = ExponentialLengths(dist="exponential", mean=100, min=20, max=150)
    a = _draw(spec)
    assert a.min() == 20 and a.max() == 150
    _close(float((a == 150).mean()), math.exp(-149.5 / 100), rel=0.06)
    assert _draw(spec, cap=90).max() == 90


def test_same_seed_same_lengths_other_seed_other_lengths() -> None:
    """Seeded: equal seeds give equal lengths, another seed other lengths."""
    spec = NormalLengths(dist="normal", mean=100, stddev=30)
    assert (_draw(spec, seed=1) == _draw(spec, seed=1)).all()
    assert not (_draw(spec, seed=1) == _draw(spec, seed=2)).all()


@pytest.mark.parametrize("name", builtin_profiles())
def test_builtin_profile_reproduces_its_published_statistics(name: str) -> None:
    """Each profile's draws match the statistics its file says it reproduces."""
    profile = builtin_profile(name)
    assert profile.source and profile.date and profile.reproduces
    for role, claim in profile.reproduces.items():
        spec = getattr(profile, role)
        a = np.asarray(sample_lengths(spec, 50_000, length_rng(42, role), BIG), dtype=float)
        stats = length_stats([int(v) for v in a])
        if claim.mean is not None:
            _close(stats.mean or 0.0, claim.mean)
        for q in ("p50", "p90"):
            if getattr(claim, q) is not None:
                _close(getattr(stats, q), getattr(claim, q))
        if claim.p99 is not None:
            _close(stats.p99 or 0.0, claim.p99, rel=0.06)
        if claim.max is not None:
            assert (stats.max or 0) <= claim.max
            assert (stats.max or 0) >= 0.98 * claim.max


def test_lm_arena_tail_at_the_cap() -> None:
    """lm-arena-chat puts about 0.18 % of outputs in its top bin, next to the 4,096 cap."""
    spec = builtin_profile("lm-arena-chat").output_len
    a = np.asarray(sample_lengths(spec, 100_000, length_rng(3, "output_len"), 4096))
    assert a.max() <= 4096
    assert float((a >= 4015).mean()) == pytest.approx(0.0018, abs=0.0006)


def _backend_config(backend: str) -> ExperimentConfig:
    return ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend=backend,
        gpus=[0],
        n_prompts=50,
        random_seed=11,
        dataset={
            "input_len": {"dist": "lognormal", "mean": 20, "stddev": 10, "max": 64},
            "output_len": {"dist": "exponential", "mean": 12, "max": 40},
        },
    )


def test_every_backend_gets_the_same_requests() -> None:
    """The same config on pytorch, vllm and tensorrt builds identical prompts and lengths."""
    built = {
        b: build_requests(_backend_config(b), vocab_size=1000)
        for b in ("pytorch", "vllm", "tensorrt")
    }
    ref = built["pytorch"]
    assert len({len(r.prompt_token_ids) for r in ref}) > 5  # lengths vary
    assert len({r.max_new_tokens for r in ref}) > 5
    for reqs in built.values():
        assert [(r.prompt_token_ids, r.max_new_tokens) for r in reqs] == [
            (r.prompt_token_ids, r.max_new_tokens) for r in ref
        ]


def test_fixed_lengths_keep_their_prompts() -> None:
    """Integer lengths give every request the same length, as before distributions existed."""
    cfg = ExperimentConfig(
        model="tiny-llama", load_format="dummy", n_prompts=4, dataset={"input_len": 7}
    )
    reqs = build_requests(cfg, vocab_size=1000)
    assert {len(r.prompt_token_ids) for r in reqs} == {7}
    assert {r.max_new_tokens for r in reqs} == {cfg.max_output_tokens}


def _mixed_requests() -> list[GenerationRequest]:
    lengths = [1, 3, 17, 40, 2, 9, 33, 5, 12, 25]
    return [
        GenerationRequest(request_id=i, prompt_token_ids=[5 + i] * (4 + i), max_new_tokens=n)
        for i, n in enumerate(lengths)
    ]


@pytest.fixture
def fake_vllm() -> Iterator[FakeVLLM]:
    # EOS after 2 tokens: only min_tokens + ignore_eos keep a request going to its length.
    controller = FakeVLLM(FakeVLLMBehaviour(step_time_s=0.01, eos_after=2))
    with controller.installed():
        yield controller


def test_fake_vllm_produces_each_requests_own_length(fake_vllm: FakeVLLM, tmp_path: Path) -> None:
    """vLLM: per-request max_tokens = min_tokens, so each request yields exactly its length."""
    backend = VLLMBackend(clock=fake_vllm.behaviour.clock, workdir=tmp_path)
    cfg = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend="vllm",
        n_prompts=10,
        max_input_tokens=16,
        max_output_tokens=40,
        vllm={"max_num_seqs": 4},
    )
    try:
        backend.load(cfg)
        reqs = _mixed_requests()
        records = backend.run(reqs)
    finally:
        backend.close()
    assert [r.output_tokens for r in records] == [r.max_new_tokens for r in reqs]
    sent = [p for _, _, p in fake_vllm.added_requests]
    assert [(p.min_tokens, p.max_tokens) for p in sent] == [(r.max_new_tokens,) * 2 for r in reqs]


def test_fake_tensorrt_produces_each_requests_own_length(tmp_path: Path) -> None:
    """TensorRT-LLM: per-request SamplingParams give each request exactly its length."""
    fake = FakeTRTLLM(FakeTRTLLMBehaviour(eos_after=2))
    cfg = ExperimentConfig(
        model="tiny-llama",
        load_format="dummy",
        backend="tensorrt",
        n_prompts=10,
        max_input_tokens=16,
        max_output_tokens=40,
        tensorrt={"trtllm_backend": "pytorch", "max_batch_size": 4},
    )
    with fake.installed():
        backend = TensorRTBackend(
            clock=fake.behaviour.clock,
            engine_cache_dir=tmp_path / "cache",
            gpu_identity="NVIDIA H100 80GB HBM3 sm90",
            workdir=tmp_path / "work",
        )
        try:
            backend.load(cfg)
            reqs = _mixed_requests()
            records = backend.run(reqs)
        finally:
            backend.close()
    assert [r.output_tokens for r in records] == [r.max_new_tokens for r in reqs]


def test_workload_outcome_reports_lengths_and_waste() -> None:
    """The result block has requested/generated statistics, histograms and the waste fraction."""
    cfg = ExperimentConfig(
        model="tiny-llama", load_format="dummy", n_prompts=4, dataset={"profile": "lm-arena-chat"}
    )

    class Rec:
        def __init__(self, i: int, o: int) -> None:
            self.input_tokens, self.output_tokens = i, o

    records = [Rec(10, 2), Rec(20, 4), Rec(30, 6), Rec(40, 8)]
    out = workload_outcome(
        cfg, [2, 4, 6, 8], records, {"tokens_generated": 32, "tokens_requested": 20}
    )
    assert out.profile == "lm-arena-chat"
    assert out.provenance is not None and "ml-energy" in out.provenance.source
    assert out.output_tokens_generated.mean == 5.0
    assert out.input_tokens.max == 40.0
    assert out.static_batch_waste_fraction == pytest.approx(1 - 20 / 32)
    assert out.output_generated_histogram is not None
    assert sum(out.output_generated_histogram.counts) == 4
    assert out.output_len.startswith("empirical")
