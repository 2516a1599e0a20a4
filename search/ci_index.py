"""Commercial intentions (CIs): cleaning into a CI set, the CI token trie, and the CI <-> ads index.

RARE retrieves ads through short commercial intentions rather than through ad ids: ads map to CIs offline,
a query maps to CIs online, and the union of the CIs' ads is the answer. This module is the pure data side:
it never talks to Kafka, Redis or a model. Embeddings (for near-duplicate merging) and tokenisation (for the
trie) come in as plain callables so the index stays independent of which encoder or tokenizer is used.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
from pydantic import BaseModel, Field

from adgen.core.clock import utc_now
from adgen.index.snapshot import Snapshot, SnapshotError, SnapshotStore
from adgen.index.trie_arrays import TrieArrays

_NON_WORD = re.compile(r"[^\w&+]+")
_SPACES = re.compile(r"\s+")
_UNDERSCORES = re.compile(r"_+")

SNAPSHOT_PREFIX = "ci-"
MANIFEST = "manifest.json"

# Words that never carry a commercial intention on their own: a CI made only of these is dropped.
STOPWORDS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "and",
        "or",
        "the",
        "of",
        "for",
        "with",
        "in",
        "on",
        "to",
        "by",
        "from",
        "at",
        "as",
        "is",
        "are",
        "be",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "&",
        "+",
        "new",
        "best",
        "top",
        "buy",
        "cheap",
        "sale",
        "pack",
        "count",
        "set",
        "pcs",
        "piece",
        "pieces",
        "inch",
        "inches",
        "mm",
        "cm",
        "ft",
    ]
)


class CIError(ValueError):
    """An invalid CI set, index operation or snapshot."""


def normalise_text(text: str) -> str:
    """Canonical form shared by CIs and queries (so a head-cache key and a CI compare as equal strings).

    NFKC, case-folded, punctuation other than `&` and `+` becomes a space, whitespace collapsed.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _UNDERSCORES.sub(" ", _NON_WORD.sub(" ", text))
    return _SPACES.sub(" ", text).strip()


class CleaningConfig(BaseModel):
    """Rules that turn raw generated CIs into a usable CI set (RARE: normalise, dedup, drop rare/generic)."""

    min_words: int = Field(1, ge=1)
    max_words: int = Field(6, ge=1)
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(64, ge=4)
    min_ads: int = Field(2, ge=1, description="Drop CIs proposed for fewer ads: too rare to be an intention.")
    max_ad_share: float = Field(
        0.2, gt=0, le=1, description="Drop CIs proposed for more than this share of ads: too generic to rank."
    )
    merge_threshold: float = Field(
        0.93, gt=0, le=1, description="Cosine similarity at or above which two CIs are the same intention."
    )


class CISet(BaseModel):
    """The cleaned, merged CI vocabulary. `texts[i]` is CI id i; `aliases` maps merged variants to ids."""

    texts: list[str]
    support: list[int] = Field(description="Number of ads that proposed each CI (after merging).")
    aliases: dict[str, int] = {}

    def id_of(self, text: str) -> int | None:
        """CI id of a text (canonical or merged variant) after normalisation, else None."""
        return self.aliases.get(normalise_text(text))


class CleaningReport(BaseModel):
    """How many raw CIs each cleaning rule removed, so a rebuild is explainable."""

    raw_pairs: int
    distinct_raw: int
    dropped_shape: int
    dropped_rare: int
    dropped_generic: int
    merged: int
    kept: int


def _shape_ok(text: str, cfg: CleaningConfig) -> bool:
    words = text.split()
    if not (cfg.min_words <= len(words) <= cfg.max_words and cfg.min_chars <= len(text) <= cfg.max_chars):
        return False
    return any(w not in STOPWORDS and not w.isdigit() for w in words)


def build_ci_set(
    proposals: Mapping[str, Iterable[str]],
    embed: Callable[[Sequence[str]], np.ndarray] | None,
    cfg: CleaningConfig | None = None,
) -> tuple[CISet, dict[str, list[int]], CleaningReport]:
    """Clean raw per-ad CI proposals into a CI set and the ad -> CI ids assignment it implies.

    `proposals` maps ad id -> raw CI strings (any case/punctuation, duplicates allowed). `embed` returns one
    row per text (any scale; rows are L2-normalised here); None skips near-duplicate merging.
    """
    cfg = cfg or CleaningConfig()
    per_ad: dict[str, set[str]] = {}
    raw_pairs = 0
    for ad_id, raws in proposals.items():
        norm = set()
        for raw in raws:
            raw_pairs += 1
            text = normalise_text(raw)
            if text:
                norm.add(text)
        per_ad[ad_id] = norm
    support = Counter(t for texts in per_ad.values() for t in texts)
    n_ads = max(len(per_ad), 1)
    dropped_shape = dropped_rare = dropped_generic = 0
    kept: list[str] = []
    for text, count in support.items():
        if not _shape_ok(text, cfg):
            dropped_shape += 1
        elif count < cfg.min_ads:
            dropped_rare += 1
        elif count / n_ads > cfg.max_ad_share:
            dropped_generic += 1
        else:
            kept.append(text)
    # Most supported first, so a merge keeps the commonest spelling as the canonical CI; ties by text.
    kept.sort(key=lambda t: (-support[t], t))
    canonical_of = _merge_near_duplicates(kept, embed, cfg.merge_threshold) if embed else list(range(len(kept)))
    canon_texts = [kept[i] for i in sorted(set(canonical_of))]
    canon_id = {t: i for i, t in enumerate(canon_texts)}
    aliases = {text: canon_id[kept[canonical_of[i]]] for i, text in enumerate(kept)}
    assignment: dict[str, list[int]] = {}
    for ad_id, texts in per_ad.items():
        assignment[ad_id] = sorted({aliases[t] for t in texts if t in aliases})
    merged_support = Counter(ci for cis in assignment.values() for ci in cis)
    ci_set = CISet(texts=canon_texts, support=[merged_support[i] for i in range(len(canon_texts))], aliases=aliases)
    report = CleaningReport(
        raw_pairs=raw_pairs,
        distinct_raw=len(support),
        dropped_shape=dropped_shape,
        dropped_rare=dropped_rare,
        dropped_generic=dropped_generic,
        merged=len(kept) - len(canon_texts),
        kept=len(canon_texts),
    )
    return ci_set, assignment, report


def _merge_near_duplicates(
    texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray], threshold: float
) -> list[int]:
    """Greedy leader clustering: each text joins the first earlier leader with cosine >= threshold.

    Returns, per text, the index of its leader (itself for leaders). Vectorised per text against the leader
    matrix, which is enough for CI sets of tens of thousands.
    """
    if not texts:
        return []
    vecs = np.asarray(embed(texts), dtype=np.float32)
    if vecs.shape[0] != len(texts):
        raise CIError(f"embed returned {vecs.shape[0]} rows for {len(texts)} texts")
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    leaders = np.empty_like(vecs)
    leader_index: list[int] = []
    out: list[int] = []
    for i, v in enumerate(vecs):
        n = len(leader_index)
        if n:
            sims = leaders[:n] @ v
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                out.append(leader_index[best])
                continue
        leaders[n] = v
        leader_index.append(i)
        out.append(i)
    return out


@dataclass(frozen=True)
class CIView:
    """One consistent version of the CI <-> ads maps. Never mutated once published: a reader that took it
    iterates it safely while writers publish newer ones (like `IndexView` of the live ad index)."""

    ci_ads: Mapping[int, Mapping[str, float]]
    ad_cis: Mapping[str, Mapping[int, float]]

    def check_consistency(self, num_cis: int) -> None:
        """Raise CIError unless ci_ads and ad_cis are exact inverses with ids inside a CI set of `num_cis`."""
        pairs_a = {(ci, ad, w) for ci, ads in self.ci_ads.items() for ad, w in ads.items()}
        pairs_b = {(ci, ad, w) for ad, cis in self.ad_cis.items() for ci, w in cis.items()}
        if pairs_a != pairs_b:
            raise CIError(f"CI index out of sync: {len(pairs_a ^ pairs_b)} (ci, ad) pairs differ between maps")
        if any(not ads for ads in self.ci_ads.values()) or any(not cis for cis in self.ad_cis.values()):
            raise CIError("CI index holds an empty posting list")
        bad = [ci for ci in self.ci_ads if not 0 <= ci < num_cis]
        if bad:
            raise CIError(f"CI ids outside the CI set: {bad[:5]}")


_EMPTY_VIEW = CIView(MappingProxyType({}), MappingProxyType({}))


class CIIndex:
    """CI -> ads and ad -> CIs over a fixed CI set, with incremental add/remove of ads.

    Writers (`update`, `set_ad`, `remove_ad`; any thread, serialised by a lock) change private working maps;
    readers (`view`, `rank`, `ads_of`, `ci_ads`, `ad_cis`) get an immutable `CIView`. A view is published
    lazily, at the first read after a change, so a bulk build of N ads costs one publication rather than N,
    and it rebuilds only the postings that changed (unchanged ones are shared between versions). The two
    maps are exact inverses (`check_consistency`). Weights are the strength of an ad's association with a
    CI (e.g. the model's probability), used to rank the union of ads.
    """

    def __init__(self, ci_set: CISet, version: str | None = None) -> None:
        self.ci_set = ci_set
        self.version = version or utc_now().strftime("%Y%m%dT%H%M%S%f")
        self._ci_ads: dict[int, dict[str, float]] = {}
        self._ad_cis: dict[str, dict[int, float]] = {}
        self._changed_cis: set[int] = set()
        self._changed_ads: set[str] = set()
        self._published = _EMPTY_VIEW
        self._current: CIView | None = _EMPTY_VIEW  # None: a change is waiting to be published
        self._lock = threading.Lock()

    @property
    def num_cis(self) -> int:
        return len(self.ci_set.texts)

    # -- writers ------------------------------------------------------------------------------------------
    def update(
        self, upserts: Mapping[str, Mapping[int, float]] | None = None, removals: Iterable[str] = ()
    ) -> set[str]:
        """Replace the CIs of `upserts`' ads and drop `removals`, as one change; returns the ads that changed.

        Idempotent: replaying the same update gives the same index. An empty mapping removes the ad.
        """
        upserts = upserts or {}
        for ad_id, weights in upserts.items():
            for ci in weights:
                if not 0 <= ci < self.num_cis:
                    raise CIError(f"CI id {ci} for ad {ad_id!r} is outside the CI set of {self.num_cis}")
        changed: set[str] = set()
        with self._lock:
            for ad_id in removals:
                if self._drop(ad_id):
                    changed.add(ad_id)
            for ad_id, weights in upserts.items():
                new = {int(ci): float(w) for ci, w in weights.items()}
                if self._ad_cis.get(ad_id) == new:
                    continue
                self._drop(ad_id)
                if new:
                    self._ad_cis[ad_id] = new
                    for ci, w in new.items():
                        self._ci_ads.setdefault(ci, {})[ad_id] = w
                    self._changed_cis.update(new)
                self._changed_ads.add(ad_id)
                changed.add(ad_id)
            if changed:
                self._current = None
        return changed

    def _drop(self, ad_id: str) -> bool:
        old = self._ad_cis.pop(ad_id, None)
        if old is None:
            return False
        for ci in old:
            ads = self._ci_ads.get(ci)
            if ads is not None:
                ads.pop(ad_id, None)
                if not ads:
                    del self._ci_ads[ci]
        self._changed_cis.update(old)
        self._changed_ads.add(ad_id)
        return True

    def set_ad(self, ad_id: str, ci_weights: Mapping[int, float]) -> None:
        """Replace the CIs of one ad (idempotent: replaying the same update gives the same index)."""
        self.update({ad_id: ci_weights})

    def remove_ad(self, ad_id: str) -> bool:
        """Drop an ad from both maps; True if it was indexed."""
        return bool(self.update(removals=[ad_id]))

    # -- readers ------------------------------------------------------------------------------------------
    @property
    def view(self) -> CIView:
        """The current immutable version (published here if a change is waiting)."""
        current = self._current
        if current is not None:
            return current
        with self._lock:
            if self._current is None:
                self._current = self._publish()
            return self._current

    def _publish(self) -> CIView:
        """A new view sharing every posting that did not change since the last one (under the lock)."""
        ci_ads = dict(self._published.ci_ads)
        for ci in self._changed_cis:
            ads = self._ci_ads.get(ci)
            if ads:
                ci_ads[ci] = MappingProxyType(dict(ads))
            else:
                ci_ads.pop(ci, None)
        ad_cis = dict(self._published.ad_cis)
        for ad in self._changed_ads:
            cis = self._ad_cis.get(ad)
            if cis:
                ad_cis[ad] = MappingProxyType(dict(cis))
            else:
                ad_cis.pop(ad, None)
        self._changed_cis.clear()
        self._changed_ads.clear()
        self._published = CIView(MappingProxyType(ci_ads), MappingProxyType(ad_cis))
        return self._published

    @property
    def ci_ads(self) -> Mapping[int, Mapping[str, float]]:
        return self.view.ci_ads

    @property
    def ad_cis(self) -> Mapping[str, Mapping[int, float]]:
        return self.view.ad_cis

    def ads_of(self, ci: int) -> Mapping[str, float]:
        return self.view.ci_ads.get(ci, _NO_ADS)

    def check_consistency(self) -> None:
        """Raise CIError unless the current view's maps are exact inverses with ids inside the CI set."""
        self.view.check_consistency(self.num_cis)

    def rank(self, ci_scores: Mapping[int, float], top_n: int) -> list[tuple[str, float]]:
        """Union of the CIs' ads, scored by sum over CIs of ci_score * association weight, best first.

        Reads one view throughout, so an update published meanwhile never shows half applied."""
        ci_ads = self.view.ci_ads
        scores: dict[str, float] = {}
        for ci, s in ci_scores.items():
            for ad, w in ci_ads.get(ci, _NO_ADS).items():
                scores[ad] = scores.get(ad, 0.0) + s * w
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]


_NO_ADS: Mapping[str, float] = MappingProxyType({})


def ci_token_sequences(ci_set: CISet, encode: Callable[[str], list[int]], eos_id: int) -> list[list[int]]:
    """Token ids of every CI followed by EOS, so a CI is a root-to-leaf path and no CI prefixes another."""
    seqs = [[*encode(text), eos_id] for text in ci_set.texts]
    seen: dict[tuple[int, ...], int] = {}
    for i, seq in enumerate(seqs):
        if eos_id in seq[:-1]:
            raise CIError(f"tokenizer produced EOS inside CI {ci_set.texts[i]!r}")
        prev = seen.setdefault(tuple(seq), i)
        if prev != i:
            raise CIError(
                f"CIs {ci_set.texts[prev]!r} and {ci_set.texts[i]!r} tokenize identically; "
                "extend the tokenizer vocabulary or rebuild the CI set"
            )
    return seqs


def build_ci_trie(token_sequences: Sequence[Sequence[int]]) -> TrieArrays:
    """The decoding constraint: a CSR trie whose leaf values are CI ids."""
    return TrieArrays.from_sequences(token_sequences, list(range(len(token_sequences))))


# --- snapshots ---------------------------------------------------------------------------------------
# One snapshot store for every index (index/snapshot.py): versioned `v00000042/` directories with a manifest
# and checksums, written atomically. A CI snapshot's own identity (the CI-set version its ids belong to, the
# tokenizer fingerprint) lives in the manifest's meta; the worker writes new versions of the same CI set as
# new ads get CIs.

CI_KIND = "ci-index"


class CISnapshotManifest(BaseModel):
    """What a CI snapshot holds (from the store's verified manifest)."""

    version: str = Field(description="The CI-set version its CI ids belong to (CIIndex.version).")
    created_at: float
    num_cis: int
    num_ads: int
    tokenizer_fingerprint: str = ""
    model_version: str = Field("", description="The CI model that answered its head cache ('' when not recorded).")
    files: dict[str, str] = Field(description="file name -> sha256")


def save_snapshot(
    root: Path,
    index: CIIndex,
    token_sequences: Sequence[Sequence[int]] | None = None,
    head_cache: Mapping[str, object] | None = None,
    tokenizer_fingerprint: str = "",
    model_version: str = "",
) -> Path:
    """Publish the next version under `root` atomically (index/snapshot.py's store); returns its path.

    JSON for the CI set and ad -> CIs (CI -> ads is derived on load, so the two can never disagree on disk),
    npy for the CI token sequences (flat tokens + offsets). `model_version`: the CI model that answered
    `head_cache` (`CIModel.model_version`), so a loader serving another model knows to answer it again.
    """
    view = index.view
    view.check_consistency(index.num_cis)
    documents: dict[str, object] = {
        "ci_set": index.ci_set.model_dump(mode="json"),
        "ad_cis": {ad: {str(ci): w for ci, w in sorted(cis.items())} for ad, cis in sorted(view.ad_cis.items())},
    }
    if head_cache is not None:
        documents["head_cache"] = dict(head_cache)
    arrays: dict[str, np.ndarray] = {}
    if token_sequences is not None:
        offsets = np.zeros(len(token_sequences) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in token_sequences], out=offsets[1:])
        arrays["ci_tokens"] = np.fromiter(
            (t for s in token_sequences for t in s), dtype=np.int64, count=int(offsets[-1])
        )
        arrays["ci_token_offsets"] = offsets
    meta = {
        "ci_version": index.version,
        "num_cis": index.num_cis,
        "num_ads": len(view.ad_cis),
        "tokenizer_fingerprint": tokenizer_fingerprint,
        "ci_model_version": model_version,
    }
    try:
        snapshot = SnapshotStore(root, CI_KIND).write(
            model_version=tokenizer_fingerprint, arrays=arrays, documents=documents, meta=meta
        )
    except SnapshotError as exc:
        raise CIError(str(exc)) from exc
    return snapshot.path


class CISnapshot(BaseModel):
    """A loaded snapshot (the index is rebuilt from it by `to_index`)."""

    model_config = {"arbitrary_types_allowed": True}

    path: Path
    manifest: CISnapshotManifest
    ci_set: CISet
    ad_cis: dict[str, dict[int, float]]
    token_sequences: list[list[int]] | None = None
    head_cache: dict[str, object] | None = None

    def to_index(self) -> CIIndex:
        index = CIIndex(self.ci_set, version=self.manifest.version)
        index.update(self.ad_cis)
        return index


def _read(snapshot: Snapshot) -> CISnapshot:
    manifest = snapshot.manifest
    meta = manifest.meta
    files = manifest.files
    raw = snapshot.document("ad_cis")
    seqs = None
    if "ci_tokens.npy" in files:
        flat, offsets = snapshot.array("ci_tokens"), snapshot.array("ci_token_offsets")
        seqs = [flat[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]
    return CISnapshot(
        path=snapshot.path,
        manifest=CISnapshotManifest(
            version=str(meta["ci_version"]),
            created_at=manifest.created_at.timestamp(),
            num_cis=int(meta["num_cis"]),
            num_ads=int(meta["num_ads"]),
            tokenizer_fingerprint=str(meta.get("tokenizer_fingerprint", "")),
            model_version=str(meta.get("ci_model_version", "")),
            files={name: entry.sha256 for name, entry in files.items()},
        ),
        ci_set=CISet.model_validate(snapshot.document("ci_set")),
        ad_cis={ad: {int(ci): float(w) for ci, w in cis.items()} for ad, cis in raw.items()},
        token_sequences=seqs,
        head_cache=snapshot.document("head_cache") if "head_cache.json" in files else None,
    )


def load_snapshot(path: Path) -> CISnapshot:
    """Load one snapshot directory (`<root>/v00000042`), verifying every checksum in its manifest."""
    path = Path(path)
    try:
        version = int(path.name.removeprefix("v"))
        return _read(SnapshotStore(path.parent, CI_KIND).open(version))
    except (SnapshotError, ValueError, KeyError) as exc:
        raise CIError(f"{path} is not a valid CI snapshot: {exc}") from exc


def load_latest_snapshot(root: Path) -> CISnapshot:
    """Newest valid snapshot under `root`; a corrupt newer one is skipped so readers keep the last good one."""
    try:
        snapshot = SnapshotStore(root, CI_KIND).latest()
    except SnapshotError as exc:
        raise CIError(f"no valid CI snapshot under {root} ({exc}); run `adgen ci build` first") from exc
    try:
        return _read(snapshot)
    except (ValueError, KeyError) as exc:
        raise CIError(f"CI snapshot {snapshot.path} is unreadable: {exc}") from exc
