"""Tokenizers of the text-to-motion policy: a word-level text vocabulary plus MotionGPT's motion tokens."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# T5's reserved ids: the decoder starts from <pad> = 0 and stops at </s> = 1.
PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"


def motion_token(index: int) -> str:
    """MotionGPT's text form of motion vocabulary entry ``index`` (codes, then start, end, mask)."""
    return f"<motion_id_{index}>"


def build_word_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """A lowercase word-level tokenizer trained on ``texts`` with T5's special ids (pad 0, eos 1, unk 2).

    Word level rather than sentencepiece: the from-scratch vocabulary is a few thousand caption words, where a
    subword model buys nothing and makes the tiny model's job harder.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        special_tokens=[PAD_TOKEN, EOS_TOKEN, UNK_TOKEN], min_frequency=min_frequency, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )


def add_motion_tokens(tokenizer: PreTrainedTokenizerBase, codebook_size: int) -> int:
    """Append ``<motion_id_0>``..``<motion_id_{K+2}>`` as MotionGPT does (``add_tokens``) and return the id of
    ``<motion_id_0>``.

    The ids must be contiguous and come after the text vocabulary, because a MotionGPT checkpoint's embedding
    rows are laid out that way; a tokenizer that already holds some motion tokens elsewhere is rejected.
    """
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    names = [motion_token(i) for i in range(codebook_size + 3)]
    vocab = tokenizer.get_vocab()
    present = [name for name in names if name in vocab]
    if present and len(present) != len(names):
        raise ValueError(
            f"tokenizer already holds {len(present)} of the {len(names)} motion tokens (e.g. {present[0]}); "
            "expected none or all of them"
        )
    if not present:
        tokenizer.add_tokens(names)
    offset = tokenizer.convert_tokens_to_ids(names[0])
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(offset, offset + len(names))):
        raise ValueError(f"motion token ids are not contiguous from {offset} ({names[0]}); tokenizer is corrupt")
    return offset
