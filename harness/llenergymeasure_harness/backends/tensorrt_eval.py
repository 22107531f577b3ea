"""The evaluation methods of the TensorRT-LLM backend, mixed into
:class:`~llenergymeasure_harness.backends.tensorrt.TensorRTBackend` so its measured path stays
as it is.

Scores come from each request's **context logits** (``SamplingParams(return_context_logits=
True)``, read from ``RequestOutput.context_logits``, one row per prompt token), log-softmaxed
here in float64, as lm-eval's ``hf`` model scores a forward pass. TensorRT-LLM 1.2's own
``prompt_logprobs`` are not used: they are computed from the same logits but keep only each
position's top-k tokens (``executor/result.py``: ``_topk_logprobs(context_logits, k, None)``),
so the prompt's actual token is missing whenever it is not among them.

Where context logits come from:

* ``trtllm_backend: pytorch``: the PyTorch flow gathers them for the requests that ask;
* ``trtllm_backend: tensorrt``: only an engine built with ``gather_context_logits`` returns
  them (``BaseLLM._check_arguments``); that engine computes every prompt token's logits in
  every request, so it is the user's choice (``tensorrt.build_args``), checked at load
  (``TensorRTConfig.loglikelihood_gap``).

Each scoring request carries its own ``cache_salt``, so no KV block is reused from another
request (a reused prefix would have no logits rows); a reply with fewer rows than tokens is
an error, never a silently shorter sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from llenergymeasure_contract.errors import ExperimentError
from llenergymeasure_harness.backends.base import Generated, Score, ScoreRequest, TextRequest

_salts = itertools.count()


def logits_rows(logits: Any) -> Any:
    """Context logits as a float64 ``(tokens, vocab)`` NumPy array (a torch tensor of any
    dtype and device, or an array; a leading batch axis of 1 is dropped)."""
    if hasattr(logits, "detach"):  # torch.Tensor: bfloat16 has no NumPy dtype
        logits = logits.detach().float().cpu().numpy()
    rows = np.asarray(logits, dtype=np.float64)
    if rows.ndim == 3 and rows.shape[0] == 1:
        rows = rows[0]
    if rows.ndim != 2:
        raise ExperimentError(f"TensorRT-LLM returned context logits of shape {rows.shape}")
    return rows


def score_from_logits(token_ids: Sequence[int], n: int, logits: Any) -> Score:
    """The summed log-probability of the last ``n`` of ``token_ids`` under ``logits`` (row
    ``i`` predicts token ``i + 1``), greedy when each is its row's argmax."""
    rows = logits_rows(logits)
    if rows.shape[0] < len(token_ids):
        raise ExperimentError(
            f"TensorRT-LLM returned context logits for {rows.shape[0]} of {len(token_ids)} "
            "prompt tokens; scores need all of them"
        )
    wanted = np.asarray(token_ids[-n:])
    picked = rows[len(token_ids) - n - 1 : len(token_ids) - 1]
    top = picked.max(axis=-1, keepdims=True)
    logsumexp = top[:, 0] + np.log(np.exp(picked - top).sum(axis=-1))
    own = picked[np.arange(n), wanted] - logsumexp
    greedy = bool((picked.argmax(axis=-1) == wanted).all())
    return Score(logprob=float(own.sum()), is_greedy=greedy, input_tokens=len(token_ids))


class TensorRTEvaluationMethods:
    """The :class:`~.base.Evaluable` methods of :class:`~.tensorrt.TensorRTBackend`."""

    _llm: Any
    _trtllm: Any
    _end_id: int | None

    def _submit(self, prompt_ids: list[int], params: Any) -> Any:
        """One non-streaming request with a salt of its own (no KV reuse across requests)."""
        if self._llm is None:
            raise ExperimentError("TensorRTBackend evaluation called before load()")
        return self._llm.generate_async(
            {"prompt_token_ids": prompt_ids},
            sampling_params=params,
            streaming=False,
            cache_salt=f"llem-eval-{next(_salts)}",
        )

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """As lm-eval's ``hf`` model: context + continuation cut to the last ``max_length``
        tokens, prefill with one greedy token, the continuation's rows of the context
        logits log-softmaxed and summed; ``batch_size`` requests in flight at once."""
        trtllm = self._trtllm
        out: list[Score] = []
        for start in range(0, len(requests), max(1, batch_size)):
            chunk = requests[start : start + batch_size]
            wholes = [(r.context_ids + r.continuation_ids)[-max_length:] for r in chunk]
            results = [
                self._submit(
                    whole,
                    trtllm.SamplingParams(
                        max_tokens=1,
                        top_k=1,
                        return_context_logits=True,
                        detokenize=False,
                        **self._end_kwargs(),
                    ),
                )
                for whole in wholes
            ]
            for req, whole, result in zip(chunk, wholes, results, strict=True):
                done = result.result()
                n = min(len(req.continuation_ids), len(whole) - 1)
                out.append(score_from_logits(whole, n, done.context_logits))
        return out

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        """What each request generated: greedy is ``top_k=1``; TensorRT-LLM stops at EOS or
        a stop string (matched on its tokens; the caller still cuts at the text)."""
        trtllm = self._trtllm
        out: list[Generated] = []
        for start in range(0, len(requests), max(1, batch_size)):
            chunk = requests[start : start + batch_size]
            results = []
            for r in chunk:
                sampling: dict[str, Any] = (
                    {"temperature": r.temperature} if r.temperature > 0 else {"top_k": 1}
                )
                params = trtllm.SamplingParams(
                    max_tokens=r.max_new_tokens,
                    stop=list(r.stop) or None,
                    **sampling,
                    **self._end_kwargs(),
                )
                results.append(self._submit(list(r.prompt_ids), params))
            for result in results:
                completion = result.result().outputs[0]
                out.append(Generated(str(completion.text), len(completion.token_ids)))
        return out

    def _end_kwargs(self) -> dict[str, int]:
        """``end_id``/``pad_id`` when the engine has no tokenizer to take them from."""
        return {} if self._end_id is None else {"end_id": self._end_id, "pad_id": self._end_id}
