"""lm-eval's model interface on top of a loaded engine: :class:`EngineLM`.

One adapter for every engine that implements :class:`~.backends.base.Evaluable`
(``loglikelihood`` and ``generate_texts`` on token ids). Tokenisation, the context /
continuation split, stop sequences and the text post-processing are lm-eval's own
(``TemplateLM`` and ``lm_eval.models.utils``), done the way its ``hf`` model does them, so the
same engine, task and items give the same scores. Imported only when an experiment has a
``quality:`` section (lm_eval is an optional extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from llenergymeasure_harness.backends.base import Evaluable, ScoreRequest, TextRequest

#: lm-eval's default for max_gen_toks when a task does not set it.
DEFAULT_MAX_GEN_TOKS = 256


class EngineLM(TemplateLM):  # type: ignore[misc]  # lm_eval is untyped
    """lm-eval's ``LM`` over an :class:`Evaluable` engine, counting the tokens it moves.

    Args:
        engine: The loaded backend.
        tokenizer: The model's ``transformers`` tokenizer.
        batch_size: Requests scored or generated at once.
        max_length: Longest context in tokens.
    """

    def __init__(
        self, engine: Evaluable, tokenizer: Any, *, batch_size: int, max_length: int
    ) -> None:
        super().__init__()
        self.engine = engine
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self._max_length = max_length
        self.input_tokens = 0
        self.output_tokens = 0

    # ------------------------------------------------------------------ tokens

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """As lm-eval's ``hf``: the tokenizer's own special tokens unless told, none when the
        string already starts with the BOS text."""
        special: dict[str, bool] = {}
        if add_special_tokens is not None:
            special["add_special_tokens"] = add_special_tokens
        elif has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids: list[int] = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens))

    # ------------------------------------------------------------------ scoring

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        scores = self.engine.loglikelihood(
            [ScoreRequest(list(ctx), list(cont)) for _, ctx, cont in requests],
            batch_size=self.batch_size,
            max_length=self.max_length,
        )
        self.input_tokens += sum(s.input_tokens for s in scores)
        out = [(s.logprob, s.is_greedy) for s in scores]
        for (key, _, _), value in zip(requests, out, strict=True):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, value)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Perplexity-style scoring over disjoint windows of ``max_length`` (lm-eval's rule)."""
        windows: list[tuple[None, list[int], list[int]]] = []
        counts: list[int] = []
        for (string,) in (req.args for req in requests):
            rolling = [
                lm_utils.make_disjoint_window(w)
                for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows.extend((None, ctx, cont) for ctx, cont in rolling)
            counts.append(len(rolling))
        scores = self._loglikelihood_tokens(windows)
        out: list[float] = []
        pos = 0
        for n in counts:
            out.append(sum(s for s, _ in scores[pos : pos + n]))
            pos += n
        return out

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Generate per lm-eval's ``generation_kwargs``: stop at ``until`` or EOS, at most
        ``max_gen_toks``; the context cut from the left to leave room for them."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        prepared: list[tuple[TextRequest, list[str]]] = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), DEFAULT_MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            temperature = float(kwargs.get("temperature") or 0.0)
            if not kwargs.get("do_sample"):
                temperature = 0.0
            ids = self.tok_encode(context, left_truncate_len=self.max_length - max_gen)
            prepared.append((TextRequest(ids, max_gen, tuple(until), temperature), until))
        generated = self.engine.generate_texts(
            [r for r, _ in prepared], batch_size=self.batch_size, tokenizer=self.tokenizer
        )
        out: list[str] = []
        for (req, until), gen, (context, gen_kwargs) in zip(
            prepared, generated, (r.args for r in requests), strict=True
        ):
            self.input_tokens += len(req.prompt_ids)
            self.output_tokens += gen.output_tokens
            text = postprocess_generated_text(gen.text, until, None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out

    # ------------------------------------------------------------------ chat

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                chat_history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )
        )
