"""The zoo's word-level tokenizer, built offline with the `tokenizers` library.

A sentencepiece T5 tokenizer would need a download; a WordLevel model over the shapes
grammar's vocabulary needs nothing and saves as a standard tokenizer.json that
`PreTrainedTokenizerFast.from_pretrained` reads back.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from trdq.zoo.architectures import MAX_SEQUENCE_LENGTH

#: T5 convention: pad=0, eos=1, unk=2.
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]

#: Fallback vocabulary used until the shapes grammar (trdq.data.grammar) provides one.
BASE_WORDS = ["a", "an", "the", "of", "on", "at", "in", "with", "and", "to", "is", "moving", "red", "green", "blue", "yellow", "white", "black", "purple", "orange", "gray", "grey", "pink", "cyan", "brown", "circle", "square", "triangle", "star", "cross", "diamond", "rectangle", "ring", "shape", "small", "medium", "large", "big", "tiny", "top", "bottom", "left", "right", "center", "centre", "middle", "upper", "lower", "background", "slowly", "quickly", "fast", "slow", "up", "down"]


def vocabulary_words() -> list[str]:
    """Words of the shapes grammar when it is available, plus the base words."""
    words = list(BASE_WORDS)
    try:
        from trdq.data.grammar import vocabulary
    except ImportError:  # the grammar module arrives with the data package
        return sorted(set(words))
    return sorted(set(words) | set(vocabulary()))


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary_words():
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_SEQUENCE_LENGTH,
    )
