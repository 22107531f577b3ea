"""A tiny Llama checkpoint built on the spot: random weights and a tokenizer trained locally.

Servers such as ``transformers serve`` load a checkpoint from disk (weights, config and a
tokenizer); the built-in ``tiny-llama`` architecture has no tokenizer and dummy weights are not
on disk. :func:`build_tiny_checkpoint` writes one in about a second, without any download: a
byte-level BPE tokenizer trained with ``tokenizers`` on a few sentences and a 2-layer, 64-wide
Llama with seeded random weights. With ``chat_template`` the tokenizer also gets a Jinja chat
template (:data:`TINY_CHAT_TEMPLATE` is a small one in the Llama-2 style), saved where
``transformers`` saves it (``chat_template.jinja``), for chat datasets.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = (
    "the quick brown fox jumps over the lazy dog",
    "energy per token under arriving traffic",
    "a server answers requests as they arrive",
)


#: A minimal chat template: BOS, then each message as ``<|role|>content</s>``, then the
#: assistant's header when a generation prompt is asked for.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_checkpoint(
    path: Path, *, vocab_size: int = 320, seed: int = 0, chat_template: str | None = None
) -> Path:
    """Write a tiny random Llama and its tokenizer to ``path``; returns ``path``.

    Args:
        path: The directory to write.
        vocab_size: BPE vocabulary size (special tokens included).
        seed: Seed of the random weights.
        chat_template: A Jinja chat template for the tokenizer (None: no template).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 10, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.pad_token = fast.eos_token
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


__all__ = ["TINY_CHAT_TEMPLATE", "build_tiny_checkpoint"]
