"""Byte-level BPE tokenizers trained with `tokenizers`, saved in the transformers format.

Byte-level means any typed text still tokenizes (unknown words fall back to bytes); the template's
special strings are added as single special tokens.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmlc.config import TemplateConfig


def train_tokenizer(texts: Iterable[str], vocab_size: int, template: TemplateConfig) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most ``vocab_size`` tokens on ``texts``.

    The template's special tokens come first (ids 0..6 for the default template), then the 256 byte
    symbols, then merges. Returns a transformers fast tokenizer with ``bos``/``eos`` set to the
    template's ``bos``/``end``.
    """
    specials = template.special_tokens()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=template.bos, eos_token=template.end,
                                   additional_special_tokens=specials[1:])
