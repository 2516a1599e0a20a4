"""Ad-ID tokens: one input token per ad known at training time, written after the ad's S-ID in the prompt.

Why: an S-ID names an ad by its text (plus collaborative) neighbourhood, which is what lets new ads be generated;
but on real data the next click also depends on which *exact* ads were seen, and a small model composes that poorly
from 3-4 shared code tokens (its hit rate in the top 10 matched SASRec's while its top-1 lagged). A per-ad input token
gives the model SASRec's item memory on the input side only: ad tokens are never targets, the trie still decides
what can be generated, and an ad unknown to the checkpoint (added after training) gets `<ad_unk>`, which training
teaches by replacing a share of ad tokens with it (`LMTrainConfig.token_dropout`).

Tokens are named by position (`<ad_0>`, `<ad_1>`, ...) in the checkpoint's ad vocabulary, the list of ad ids saved in
its recipe (model/recipe.py), so the tokenizer never holds raw ad ids (which are arbitrary text) and the prompt
guard that turns `<word_N>` look-alikes in catalogue text into data covers them.
"""

from __future__ import annotations

from collections.abc import Sequence

AD_UNK_TOKEN = "<ad_unk>"


def ad_token_names(count: int) -> list[str]:
    """The tokens a tokenizer gets for an ad vocabulary of `count` ads: one per ad, then `<ad_unk>`."""
    return [*(f"<ad_{i}>" for i in range(count)), AD_UNK_TOKEN]


class AdTokens:
    """Token id of each ad of a checkpoint's ad vocabulary; `<ad_unk>` for any other ad."""

    def __init__(self, tokenizer: object, vocabulary: Sequence[str]) -> None:
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("the ad vocabulary lists an ad twice")
        names = ad_token_names(len(vocabulary))
        ids = list(tokenizer.convert_tokens_to_ids(names))  # type: ignore[attr-defined]
        unk = getattr(tokenizer, "unk_token_id", None)
        if any(i is None or i == unk for i in ids) or ids != list(range(ids[0], ids[0] + len(ids))):
            raise ValueError(
                f"the tokenizer does not hold the {len(names)} ad tokens <ad_0>..{AD_UNK_TOKEN} as one block; "
                "it was not built for this ad vocabulary (recipe.ad_vocabulary)"
            )
        self.first, self.unk = ids[0], ids[-1]
        self._of = dict(zip(vocabulary, ids, strict=False))

    def id_of(self, ad_id: str) -> int:
        return self._of.get(ad_id, self.unk)

    @property
    def block(self) -> tuple[int, int]:
        """[first, unk): the ids of the known ads' tokens (what token dropout may replace with `unk`)."""
        return self.first, self.unk
