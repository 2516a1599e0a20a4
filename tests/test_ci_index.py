"""CI set cleaning, near-duplicate merging, the CI trie, index consistency and snapshots."""

from __future__ import annotations

import json
import random
import threading

import numpy as np
import pytest
import torch

from adgen.search.ci_index import (
    CIError,
    CIIndex,
    CISet,
    CIView,
    CleaningConfig,
    build_ci_set,
    build_ci_trie,
    ci_token_sequences,
    load_latest_snapshot,
    load_snapshot,
    normalise_text,
    save_snapshot,
)


def test_normalise_text_folds_case_punctuation_and_whitespace():
    assert normalise_text("  Digital   MULTIMETER!! ") == "digital multimeter"
    assert normalise_text("Nitrile-Gloves, (Large)") == "nitrile gloves large"
    assert normalise_text("ＰＩＰＥＴＴＥ\ttips") == "pipette tips"  # full-width folds via NFKC
    assert normalise_text("AT&T c++_tools") == "at&t c++ tools"
    assert normalise_text("?!...") == ""


def _letter_bag_embed(texts):
    """A deterministic embedding where texts with the same letters (e.g. plural 's' aside) are close."""
    out = np.zeros((len(texts), 27), dtype=np.float32)
    for i, t in enumerate(texts):
        for ch in t.rstrip("s"):
            out[i, ord(ch) - 97 if ch.isalpha() and ch.isascii() else 26] += 1
    return out


def test_build_ci_set_deduplicates_and_drops_rare_generic_and_stopword_cis():
    proposals = {f"ad{i}": ["Lab Gloves", "lab gloves!", "industrial", "the", f"unique thing {i}"] for i in range(2)}
    proposals.update({f"ad{i}": ["industrial", "safety goggles", "Safety Goggles"] for i in range(2, 10)})
    cfg = CleaningConfig(min_ads=2, max_ad_share=0.85)
    ci_set, assignment, report = build_ci_set(proposals, embed=None, cfg=cfg)
    assert sorted(ci_set.texts) == ["lab gloves", "safety goggles"]
    assert report.dropped_generic == 1  # "industrial" is on every ad
    assert report.dropped_rare == 2  # the two "unique thing i"
    assert report.dropped_shape == 1  # "the" is only a stopword
    gloves = ci_set.id_of("LAB GLOVES")
    assert assignment["ad0"] == [gloves]
    assert ci_set.support[ci_set.id_of("safety goggles")] == 8


def test_near_duplicates_merge_into_the_most_supported_spelling():
    proposals = {f"a{i}": ["safety goggle"] for i in range(3)}
    proposals.update({f"b{i}": ["safety goggles"] for i in range(2)})
    proposals.update({f"c{i}": ["pipette tips"] for i in range(2)})
    ci_set, assignment, report = build_ci_set(
        proposals, embed=_letter_bag_embed, cfg=CleaningConfig(min_ads=1, max_ad_share=1.0, merge_threshold=0.99)
    )
    assert report.merged == 1
    assert sorted(ci_set.texts) == ["pipette tips", "safety goggle"]
    goggle = ci_set.id_of("safety goggle")
    assert ci_set.id_of("safety goggles") == goggle
    assert assignment["b0"] == [goggle]
    assert ci_set.support[goggle] == 5


def test_index_stays_consistent_after_random_adds_and_removes():
    rng = random.Random(0)
    ci_set = CISet(texts=[f"ci {i}" for i in range(20)], support=[1] * 20)
    index = CIIndex(ci_set)
    live: dict[str, dict[int, float]] = {}
    for step in range(500):
        ad = f"ad{rng.randrange(40)}"
        if rng.random() < 0.35:
            assert index.remove_ad(ad) == (ad in live)
            live.pop(ad, None)
        else:
            cis = {rng.randrange(20): rng.random() for _ in range(rng.randrange(1, 4))}
            index.set_ad(ad, cis)
            live[ad] = cis
        if step % 50 == 0:
            index.check_consistency()
    index.check_consistency()
    assert index.ad_cis == live
    for ci in range(20):
        expected = {ad for ad, cis in live.items() if ci in cis}
        assert set(index.ads_of(ci)) == expected


def test_index_rejects_ci_ids_outside_the_set_and_detects_corruption():
    index = CIIndex(CISet(texts=["a b c"], support=[1]))
    with pytest.raises(CIError, match="outside the CI set"):
        index.set_ad("ad1", {3: 1.0})
    index.set_ad("ad1", {0: 1.0})
    with pytest.raises(TypeError):  # a published view is read-only
        index.ci_ads[0]["ghost"] = 1.0  # type: ignore[index]
    torn = CIView(ci_ads={0: {"ad1": 1.0, "ghost": 1.0}}, ad_cis={"ad1": {0: 1.0}})
    with pytest.raises(CIError, match="out of sync"):
        torn.check_consistency(index.num_cis)


def test_queries_from_threads_never_see_a_half_applied_update():
    """Readers rank while a writer adds and removes ads. Every ad goes into CIs 0 and 1 with one weight in
    [1, 1.5) as one update, so an answer scores it 2 x weight >= 2; a reader that saw one posting but not the
    other scores it < 1.5, and one that iterated a posting while it changed raises."""
    index = CIIndex(CISet(texts=["ci zero", "ci one"], support=[1, 1]))
    errors: list[BaseException] = []
    stop = threading.Event()
    answers = [0]

    def write() -> None:
        rng = random.Random(1)
        try:
            for step in range(20_000):
                ads = {f"ad{rng.randrange(300)}" for _ in range(rng.randrange(1, 5))}
                if step % 3 == 2:
                    index.update(removals=ads)
                else:
                    index.update({ad: dict.fromkeys((0, 1), 1.0 + rng.random() / 2) for ad in ads})
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                half = [(ad, s) for ad, s in index.rank({0: 1.0, 1: 1.0}, top_n=1000) if s < 2.0]
                assert not half, f"half-applied updates seen: {half[:3]}"
                index.view.check_consistency(index.num_cis)
                answers[0] += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=read) for _ in range(3)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, repr(errors[0])
    assert answers[0] > 10
    index.check_consistency()


def test_rank_sums_ci_scores_times_weights_over_the_union():
    index = CIIndex(CISet(texts=["x one", "y two"], support=[2, 2]))
    index.set_ad("a", {0: 1.0})
    index.set_ad("b", {0: 0.5, 1: 1.0})
    index.set_ad("c", {1: 0.2})
    ranked = index.rank({0: 0.6, 1: 0.4}, top_n=10)
    assert [ad for ad, _ in ranked] == ["b", "a", "c"]
    assert ranked[0][1] == pytest.approx(0.6 * 0.5 + 0.4 * 1.0)


def test_ci_trie_leaves_are_exactly_the_ci_set():
    ci_set = CISet(texts=["lab gloves", "lab goggles", "lab"], support=[1, 1, 1])
    vocab = {"lab": 3, "gloves": 4, "goggles": 5}
    seqs = ci_token_sequences(ci_set, lambda t: [vocab[w] for w in t.split()], eos_id=2)
    trie = build_ci_trie(seqs)
    assert trie.num_values == 3
    # walk each sequence and land on its CI id
    for ci, seq in enumerate(seqs):
        node = torch.tensor([0])
        for tok in seq:
            node = trie.step(node, torch.tensor([tok]))
        assert int(trie.leaf_value[node]) == ci


def test_ci_token_sequences_refuse_identical_tokenisations():
    ci_set = CISet(texts=["foo bar", "foo baz"], support=[1, 1])
    with pytest.raises(CIError, match="tokenize identically"):
        ci_token_sequences(ci_set, lambda t: [7, 7], eos_id=2)


def test_snapshot_round_trip_and_corrupt_newest_falls_back(tmp_path):
    ci_set = CISet(texts=["lab gloves", "pipette tips"], support=[1, 2], aliases={"lab gloves": 0, "pipette tips": 1})
    index = CIIndex(ci_set, version="001")
    index.set_ad("a", {0: 1.0, 1: 0.5})
    index.set_ad("b", {1: 1.0})
    path = save_snapshot(tmp_path, index, token_sequences=[[3, 4, 2], [5, 6, 2]], head_cache={"q": {"ads": []}})
    snap = load_snapshot(path)
    restored = snap.to_index()
    assert restored.ad_cis == index.ad_cis and restored.ci_ads == index.ci_ads
    assert snap.token_sequences == [[3, 4, 2], [5, 6, 2]]
    assert snap.head_cache == {"q": {"ads": []}}
    assert path.parent == tmp_path and path.name == "v00000001"  # index/snapshot.py's store and layout

    newer = CIIndex(ci_set, version="002")
    newer.set_ad("c", {0: 1.0})
    newer_path = save_snapshot(tmp_path, newer)
    assert load_latest_snapshot(tmp_path).manifest.version == "002"
    (newer_path / "ad_cis.json").write_text(json.dumps({"c": {"0": 9.0}}))
    assert load_latest_snapshot(tmp_path).manifest.version == "001"
    with pytest.raises(CIError, match="corrupt"):
        load_snapshot(newer_path)


def test_a_new_snapshot_of_the_same_ci_set_keeps_its_version_and_adds_the_new_ads(tmp_path):
    """What the worker does when new ads got CIs: the same CI ids, one more snapshot version."""
    index = CIIndex(CISet(texts=["lab gloves", "pipette tips"], support=[1, 1]), version="build-1")
    index.set_ad("a", {0: 1.0})
    save_snapshot(tmp_path, index)
    index.set_ad("new", {1: 0.7})
    second = save_snapshot(tmp_path, index)
    latest = load_latest_snapshot(tmp_path)
    assert latest.path == second and latest.manifest.version == "build-1"
    assert latest.to_index().ad_cis == {"a": {0: 1.0}, "new": {1: 0.7}}


def test_load_latest_snapshot_without_any_explains_what_to_run(tmp_path):
    with pytest.raises(CIError, match="adgen ci build"):
        load_latest_snapshot(tmp_path)
