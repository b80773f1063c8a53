"""Word-level tokenizers built in-process from the ShapesWorld vocabulary.

The embedded backbone's two text encoders (CLIP-style pooled, T5-style sequence) each get a fast
tokenizer built with the ``tokenizers`` library: lower-case prompt words are whole tokens, while
upper-case letters and digits (the text of a sign) are split into one token per character, so that
sign strings never seen in pretraining still tokenize (specs/shapes_world.md, "Embedded backbone").
No file or network access is needed; ``save_pretrained`` writes a ``tokenizer.json``.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..world.palette import CLASSES, COLORS
from ..world.prompts import NUMBERS, OCR_ALPHABET, OCR_TEMPLATES, POSITIONS, make_plural

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)


def world_vocabulary() -> list[str]:
    """Every token the world's prompt generators can produce, specials first (ids 0–3).

    Returns:
        Token strings in id order: the four specials, then sorted words (classes and their plurals,
        colours, number words, relation words, template words), punctuation, then the characters
        of the sign alphabet plus all digits and upper-case letters (so that any sign string
        tokenizes without ``<unk>``).
    """
    words: set[str] = {"a", "an", "photo", "of", "and"}
    words |= set(CLASSES) | {make_plural(c) for c in CLASSES} | set(COLORS) | set(NUMBERS)
    for rel in POSITIONS:
        words |= set(rel.split())
    for template in OCR_TEMPLATES:
        words |= {w for w in template.replace('"{}"', " ").split() if w}
    chars = sorted(set(OCR_ALPHABET) | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return [*SPECIALS, *sorted(words), '"', ",", ".", *chars]


def _backend(max_length: int, bos: bool) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(world_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Punctuation(),
        pre_tokenizers.Split(Regex("[A-Z0-9]"), behavior="isolated"),
    ])
    single = f"{BOS} $A {EOS}" if bos else f"$A {EOS}"
    specials = [(BOS, vocab[BOS]), (EOS, vocab[EOS])] if bos else [(EOS, vocab[EOS])]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)
    return tok


def build_tokenizers(max_length: int = 20) -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """The CLIP-side and T5-side tokenizers of the embedded backbone.

    Args:
        max_length: padded sequence length (tokens, including ``<bos>``/``<eos>``); the pipeline
            pads the CLIP side to ``tokenizer.model_max_length`` and the T5 side to its
            ``max_sequence_length`` argument.

    Returns:
        ``(tokenizer, tokenizer_2)``, both ``PreTrainedTokenizerFast`` (the word-level model has no
        BPE merges for the CLIP/T5 tokenizer classes to wrap):: ``<bos> words <eos> <pad>…`` for CLIP (its pooled output is
        read at the first ``<eos>``), ``words <eos> <pad>…`` for T5.
    """
    common = dict(pad_token=PAD, unk_token=UNK, eos_token=EOS, model_max_length=max_length)
    clip = PreTrainedTokenizerFast(tokenizer_object=_backend(max_length, bos=True), bos_token=BOS, **common)
    t5 = PreTrainedTokenizerFast(tokenizer_object=_backend(max_length, bos=False), **common)
    return clip, t5
