"""The benches' tokenizer: word-level, one word one token (``w0 w1 ...``), so that a bench sets
its sequence lengths exactly; ``<s>`` is prepended as Llama's tokenizer does."""

from __future__ import annotations

from pathlib import Path

SPECIALS = 4  # <s> </s> <pad> <unk>


def save_word_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i + SPECIALS for i in range(vocab_size - SPECIALS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(folder)  # fmt: skip
