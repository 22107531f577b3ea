"""The evaluation methods of the PyTorch backend: lm-eval's scoring (model forward) and text
generation (``generate`` with stop strings), mixed into
:class:`~llenergymeasure_harness.backends.pytorch.PyTorchBackend` so its measured path stays
as it is. ``torch`` and ``transformers`` are imported inside the methods only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llenergymeasure_harness.backends.base import Generated, Score, ScoreRequest, TextRequest


def _stop_on_text(tokenizer: Any, stop: tuple[str, ...], width: int) -> Any:
    """Stop a row once its generated text holds a stop string.

    Decodes only each row's last few tokens per step (the longest stop string's tokens plus
    two, lm-eval's rule), which is cheap; transformers' own ``stop_strings`` builds a table
    over the whole vocabulary on every ``generate`` call.
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    tail = max(len(tokenizer.encode(s, add_special_tokens=False)) for s in stop) + 2

    class _Crit(StoppingCriteria):  # type: ignore[misc]  # transformers is untyped here
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = []
            for row in input_ids[:, width:][:, -tail:].tolist():
                text = tokenizer.decode(row)
                done.append(any(s in text for s in stop))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Crit()])


class PyTorchEvaluationMethods:
    """The :class:`~.base.Evaluable` methods of :class:`~.pytorch.PyTorchBackend` (model forward for
    scores, ``generate`` for text)."""

    model: Any
    device: Any
    pad_id: int
    eos_ids: set[int]

    def loglikelihood(
        self, requests: Sequence[ScoreRequest], *, batch_size: int, max_length: int
    ) -> list[Score]:
        """Sum of continuation log-probabilities, as lm-eval's ``hf`` model computes them:
        context + continuation cut to the last ``max_length + 1`` tokens, the last one
        dropped, logits of the continuation's positions, log-softmax in float32."""
        import torch

        out: list[Score | None] = [None] * len(requests)
        # Longest first (like lm-eval's Collator): a batch pads to its first row.
        order = sorted(
            range(len(requests)),
            key=lambda i: -len(requests[i].context_ids + requests[i].continuation_ids),
        )
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = []
            for i in chunk:
                req = requests[i]
                whole = (req.context_ids + req.continuation_ids)[-(max_length + 1) :]
                rows.append((whole[:-1], req.continuation_ids))
            width = max(len(inp) for inp, _ in rows)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, (inp, _) in enumerate(rows):  # right padding: positions stay 0..n-1
                ids[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
                mask[r, : len(inp)] = 1
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, (i, (inp, cont)) in enumerate(zip(chunk, rows, strict=True)):
                n = len(cont)
                span = logprobs[r, len(inp) - n : len(inp)]
                target = torch.tensor(cont, dtype=torch.long)
                greedy = bool((span.argmax(dim=-1) == target).all())
                value = float(span.gather(1, target.unsqueeze(1)).sum())
                out[i] = Score(logprob=value, is_greedy=greedy, input_tokens=len(inp) + 1)
        return [s for s in out if s is not None]

    def generate_texts(
        self, requests: Sequence[TextRequest], *, batch_size: int, tokenizer: Any
    ) -> list[Generated]:
        """``generate`` in batches (left padding), stopping at EOS or a stop string."""
        import torch

        out: list[Generated] = [Generated("", 0) for _ in requests]
        groups: dict[tuple[tuple[str, ...], int, float], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.stop, req.max_new_tokens, req.temperature), []).append(i)
        for (stop, max_new, temperature), idx in groups.items():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                width = max(len(requests[i].prompt_ids) for i in chunk)
                ids = [
                    [self.pad_id] * (width - len(requests[i].prompt_ids)) + requests[i].prompt_ids
                    for i in chunk
                ]
                mask = [
                    [0] * (width - len(requests[i].prompt_ids)) + [1] * len(requests[i].prompt_ids)
                    for i in chunk
                ]
                kwargs: dict[str, Any] = {
                    "max_new_tokens": max_new,
                    "do_sample": temperature > 0,
                    "pad_token_id": self.pad_id,
                }
                if temperature > 0:
                    kwargs["temperature"] = temperature
                else:  # greedy: unset the checkpoint's sampling knobs
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                if stop:
                    kwargs["stopping_criteria"] = _stop_on_text(tokenizer, stop, width)
                with torch.inference_mode():
                    gen = self.model.generate(
                        input_ids=torch.tensor(ids, dtype=torch.long, device=self.device),
                        attention_mask=torch.tensor(mask, dtype=torch.long, device=self.device),
                        **kwargs,
                    )
                for i, row in zip(chunk, gen[:, width:].tolist(), strict=True):
                    toks: list[int] = []
                    for t in row:
                        if t in self.eos_ids:
                            break
                        toks.append(int(t))
                    out[i] = Generated(tokenizer.decode(toks, skip_special_tokens=True), len(toks))
        return out
