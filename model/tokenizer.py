"""Tokenizers that carry S-ID tokens and the soft-prompt token as single, contiguous vocabulary entries.

Why contiguous: the S-ID trie (`SemanticIdMap.trie_arrays(token_offset)`) addresses tokens as
`token_offset + position in sid_vocabulary()`. Adding the S-ID vocabulary in that order, in one block,
makes those positions the real vocab ids, so the decoder needs no lookup table.

API:
- `build_tokenizer(corpus_texts, extra_tokens, vocab_size)`: byte-level BPE trained offline with
  `tokenizers`, then `SOFT_PROMPT_TOKEN` and `extra_tokens` appended in order.
- `extend_tokenizer(tokenizer, extra_tokens, model=None)`: the same for a local Hugging Face checkpoint's
  own tokenizer; resizes the model's embeddings when given.
- `token_offset(tokenizer, tokens)`: id of `tokens[0]`, after checking the block is contiguous.
- `save_tokenizer` / `load_tokenizer`: a directory in the standard Hugging Face format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AddedToken, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SOFT_PROMPT_TOKEN = "<soft_prompt>"
BASE_SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


class TokenizerError(ValueError):
    """A tokenizer cannot hold the requested tokens the way the trie contract needs."""


def build_tokenizer(
    corpus_texts: Iterable[str],
    extra_tokens: Sequence[str] = (),
    vocab_size: int = 4096,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus_texts`, then append the soft-prompt token and `extra_tokens`.

    Byte-level means no text is ever unknown. `vocab_size` bounds the BPE part only; the added tokens
    come on top of it, in the order given (pass `sid_vocabulary(codebook_sizes)` for S-IDs).
    """
    if vocab_size < 300:
        raise TokenizerError(f"vocab_size={vocab_size} is below the 256 byte symbols + merges; use >= 300")
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus_texts, trainer=trainer)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
    )
    return extend_tokenizer(tokenizer, extra_tokens)


def extend_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    extra_tokens: Sequence[str] = (),
    model: PreTrainedModel | None = None,
) -> PreTrainedTokenizerBase:
    """Append the soft-prompt token, then `extra_tokens` as one contiguous block; resize `model` if given.

    Works for the built-in BPE and for a local Hugging Face checkpoint's own tokenizer. Tokens already
    in the vocabulary are an error: they would break the contiguous block the trie relies on.
    """
    wanted = [SOFT_PROMPT_TOKEN, *extra_tokens] if SOFT_PROMPT_TOKEN not in tokenizer.get_vocab() else [*extra_tokens]
    if len(set(wanted)) != len(wanted):
        raise TokenizerError("extra_tokens contains duplicates; each S-ID token must appear once")
    vocab = tokenizer.get_vocab()
    present = [t for t in wanted if t in vocab]
    if present:
        raise TokenizerError(f"tokens already in the vocabulary: {present[:5]}; build a fresh tokenizer instead")
    start = len(tokenizer)
    tokenizer.add_tokens([AddedToken(t, single_word=False, normalized=False, special=False) for t in wanted])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = tokenizer.convert_tokens_to_ids(wanted)
    if ids != list(range(start, start + len(wanted))):
        raise TokenizerError(f"added tokens did not get contiguous ids starting at {start}")
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer


def token_offset(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> int:
    """Vocab id of `tokens[0]`, verifying `tokens` occupy consecutive ids (the trie's `token_offset`)."""
    if not tokens:
        raise TokenizerError("token_offset needs at least one token")
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    unk = tokenizer.unk_token_id
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None or (i == unk and t != tokenizer.unk_token)]
    if missing:
        raise TokenizerError(f"{len(missing)} tokens are not in the tokenizer, e.g. {missing[:3]}")
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise TokenizerError("tokens are not contiguous in the vocabulary; the trie token ids would be wrong")
    return int(ids[0])


def soft_prompt_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of the learnable soft-prompt token (raises if the tokenizer was not built/extended here)."""
    return token_offset(tokenizer, [SOFT_PROMPT_TOKEN])


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save in the standard Hugging Face layout (tokenizer.json + config)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return path


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by `save_tokenizer` (or any local Hugging Face tokenizer directory)."""
    path = Path(directory)
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json (written by save_tokenizer)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
