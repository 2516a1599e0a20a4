"""Incremental trie and live S-ID index: every published version decodes exactly like a rebuild, forever.

The reference is `SemanticIdMap.trie_arrays`, the from-scratch build. Decoding is compared through
`TrieBeams` (the bookkeeping both decoders share) with log-probabilities that depend only on a beam's
token prefix, random or deliberately tied, and once through the real decoder on a tiny model.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adgen.index.live_index import LiveSidIndex, SidIndexVersion
from adgen.index.live_trie import LiveTrie, trie_paths
from adgen.index.semantic_ids import CollisionOverflowError, SemanticIdMap
from adgen.index.sid_trie import build_fixed_depth_trie
from adgen.index.trie_arrays import TrieArrays, TrieError
from adgen.model.decoding import ConstrainedBeamSearch, TrieBeams, to_results
from adgen.model.lm import LMConfig, build_lm

SIZES = (3, 4, 8)  # two semantic levels of 3 and 4 codes, 8 collision codes
OFFSET = 7
VOCAB = OFFSET + sum(SIZES)


_TABLE = torch.randn(1009, VOCAB, generator=torch.Generator().manual_seed(0))


def prefix_logprobs(prefixes: list[tuple[int, ...]], tied: bool) -> torch.Tensor:
    """[1, beams, VOCAB] log-probs that depend only on each beam's tokens so far (a table row per prefix hash).

    `tied` rounds the logits to a few levels, so many candidates share a score and tie-breaking matters.
    """
    logits = _TABLE[[zlib.crc32(repr(prefix).encode()) % len(_TABLE) for prefix in prefixes]]
    return torch.log_softmax(logits.round() if tied else logits, dim=1)[None]


def decode(trie: TrieArrays | None, leaf_items, k: int, beams: int, tied: bool) -> list[tuple[str, float]]:
    """Top-k (ad, score) by trie-constrained beam search; [] for an empty index."""
    if trie is None:
        return []
    state = TrieBeams(trie, 1, k, beams, None)
    prefixes: list[tuple[int, ...]] = [()]
    lp = prefix_logprobs(prefixes, tied)
    while (step := state.advance(lp)) is not None:
        parents, tokens = step.parent[0].tolist(), step.tokens[0].tolist()
        prefixes = [(*prefixes[p], t) for p, t in zip(parents, tokens, strict=True)]
        lp = prefix_logprobs(prefixes, tied)
    return [(leaf_items[v], s) for v, s in to_results(state.pool_scores, state.pool_values, k)[0]]


def rebuilt(sid_map: SemanticIdMap) -> tuple[TrieArrays | None, list[str]]:
    try:
        return sid_map.trie_arrays(OFFSET)
    except TrieError:
        return None, []


def ad_paths(version: SidIndexVersion) -> dict[tuple[int, ...], str]:
    if version.trie is None:
        return {}
    return {path: version.leaf_items[value] for path, value in trie_paths(version.trie)}


def assert_equals_rebuild(version: SidIndexVersion, sid_map: SemanticIdMap, decodes: bool = True) -> None:
    """Same paths to the same ads, same width and size, and the same decodes (random and tied scores)."""
    trie, items = rebuilt(sid_map)
    expected = {path: items[v] for path, v in trie_paths(trie)} if trie is not None else {}
    assert ad_paths(version) == expected
    assert set(version.leaf_items) == set(items) and len(version.leaf_items) == len(items)
    if trie is None:
        assert version.trie is None
        return
    assert version.trie.max_children == trie.max_children and version.trie.max_depth == trie.max_depth
    assert version.trie.num_values == trie.num_values == len(items)
    for k, beams, tied in [
        (min(3, len(items)), 3, False),
        (min(4, len(items)), 6, True),
        (len(items), max(8, len(items)), True),
    ][: 3 if decodes else 0]:
        assert decode(version.trie, version.leaf_items, k, beams, tied) == decode(trie, items, k, beams, tied)


def catalogue(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"ad{i:03d}" for i in range(n)], rng.integers(0, 3, (n, 2)) % np.array(SIZES[:2])


# -- the trie on its own ----------------------------------------------------------------------------------


def test_a_batch_sets_and_removes_paths_and_old_views_stay_as_they_were() -> None:
    trie = LiveTrie.build(np.array([[1, 5, 9], [1, 6, 9], [2, 5, 9]]), np.array([0, 1, 2]), 3, background=False)
    before = trie.view()
    trie.apply(np.array([[1, 5, 9], [3, 7, 9], [2, 5, 8]]), np.array([-1, 3, 4]))
    assert dict(trie_paths(trie.view())) == {(1, 6, 9): 1, (2, 5, 8): 4, (2, 5, 9): 2, (3, 7, 9): 3}
    assert dict(trie_paths(before)) == {(1, 5, 9): 0, (1, 6, 9): 1, (2, 5, 9): 2}
    assert trie.view().root != 0 and before.root == 0  # the new version starts at its own root
    trie.apply(np.array([[1, 6, 9], [2, 5, 8], [2, 5, 9], [3, 7, 9], [4, 4, 4]]), np.array([-1, -1, -1, -1, -1]))
    assert trie.view().num_values == 0 and dict(trie_paths(trie.view())) == {}  # empty; the absent path is a no-op
    trie.apply(np.array([[4, 4, 4]]), np.array([7]))
    assert dict(trie_paths(trie.view())) == {(4, 4, 4): 7}
    assert dict(trie_paths(before)) == {(1, 5, 9): 0, (1, 6, 9): 1, (2, 5, 9): 2}


def test_bad_batches_are_refused_with_the_reason() -> None:
    trie = LiveTrie.build(np.array([[1, 2]]), np.array([0]), 2)
    with pytest.raises(TrieError, match=r"paths \[C, 2\]"):
        trie.apply(np.array([[1, 2, 3]]), np.array([1]))
    with pytest.raises(TrieError, match=r"values \[C\]"):
        trie.apply(np.array([[1, 3]]), np.array([1, 2]))
    trie.apply(np.zeros((0, 2)), np.zeros(0))  # an empty batch changes nothing
    with pytest.raises(TrieError, match="appears twice"):
        trie.apply(np.array([[1, 3], [1, 3]]), np.array([1, 2]))
    with pytest.raises(TrieError, match="token ids"):
        trie.apply(np.array([[-1, 3]]), np.array([1]))
    assert dict(trie_paths(trie.view())) == {(1, 2): 0}  # nothing half-applied


def test_compaction_frees_garbage_and_gives_the_layout_of_a_rebuild() -> None:
    rng = np.random.default_rng(0)
    paths = np.unique(rng.integers(0, 6, (150, 3)), axis=0)
    trie = LiveTrie.build(paths, np.arange(len(paths)), 3, min_garbage_edges=0, background=False)
    for _ in range(40):
        pick = rng.choice(len(paths), 5, replace=False)
        trie.apply(paths[pick], np.where(rng.random(5) < 0.5, -1, pick))
        assert trie.garbage_edges <= trie.nbytes()["used"]  # bounded: compaction keeps it near the live size
    assert trie.compactions > 0
    live = dict(trie_paths(trie.view()))
    old_values = trie.compact(renumber=True)
    assert old_values.tolist() == [live[p] for p in sorted(live)]  # new value i held old_values[i]
    fresh = build_fixed_depth_trie(np.array(sorted(live)), np.arange(len(live)))
    view = trie.view()
    assert view.root == 0 and trie.garbage_edges == 0 and view.num_values == len(live)
    for name in ("indptr", "child_token", "child_node", "leaf_value"):  # bit for bit
        assert torch.equal(getattr(view, name), getattr(fresh, name)), name
    assert view.max_children == fresh.max_children


def test_background_compaction_replays_the_batches_applied_while_it_ran() -> None:
    rng = np.random.default_rng(1)
    paths = np.unique(rng.integers(0, 8, (300, 3)), axis=0)
    trie = LiveTrie.build(paths, np.arange(len(paths)), 3, min_garbage_edges=0, background=True)
    expected = dict(zip(map(tuple, paths.tolist()), range(len(paths)), strict=True))
    views = []
    for step in range(60):
        pick = rng.choice(len(paths), 6, replace=False)
        values = np.where(rng.random(6) < 0.4, -1, 1000 + step)
        trie.apply(paths[pick], values)
        for p, v in zip(map(tuple, paths[pick].tolist()), values.tolist(), strict=True):
            if v < 0:
                expected.pop(p, None)
            else:
                expected[p] = v
        assert dict(trie_paths(trie.view())) == expected
        views.append((trie.view(), dict(expected)))
    trie.wait()
    assert dict(trie_paths(trie.view())) == expected and trie.compactions > 0
    assert all(dict(trie_paths(view)) == content for view, content in views)  # every old version intact


# -- the live S-ID index against a rebuild ---------------------------------------------------------------

ops = st.lists(
    st.lists(st.tuples(st.integers(0, 24), st.integers(0, 2), st.integers(0, 3), st.booleans()), max_size=6),
    min_size=1,
    max_size=8,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=ops, start=st.integers(0, 20), compact_often=st.booleans(), renumber_often=st.booleans())
def test_every_version_decodes_exactly_like_a_rebuild_after_any_updates(
    batches: list[list[tuple[int, int, int, bool]]], start: int, compact_often: bool, renumber_often: bool
) -> None:
    """Inserts, deletes and re-inserts (also of the same ad with the same codes) in any order and batching."""
    ids, codes = catalogue(25, seed=start)
    sid_map = SemanticIdMap.build(ids[:start], codes[:start], SIZES)
    live = LiveSidIndex(
        sid_map,
        OFFSET,
        min_renumber=0 if renumber_often else 4096,
        min_garbage_edges=0 if compact_often else 1 << 30,
        background=False,
    )
    assert_equals_rebuild(live.current, sid_map)
    history: list[tuple[SidIndexVersion, dict[tuple[int, ...], str]]] = []
    for batch in batches:
        removed: set[str] = set()
        for n, a, b, delete in batch:
            ad = ids[n]
            if ad in sid_map:
                sid_map.remove(ad)
                removed.add(ad)
            if not delete:
                try:
                    sid_map.add(ad, [a, b % SIZES[1]])
                    removed.discard(ad)
                except CollisionOverflowError:
                    pass
        version = live.publish()
        assert_equals_rebuild(version, sid_map)
        assert not removed & set(version.leaf_items) and not removed & set(ad_paths(version).values())
        history.append((version, ad_paths(version)))
    for version, content in history:  # later batches, compactions and renumbering left them alone
        assert ad_paths(version) == content


def test_a_decode_started_on_a_version_finishes_on_it_while_batches_land_between_its_steps() -> None:
    ids, codes = catalogue(25, seed=3)
    sid_map = SemanticIdMap.build(ids[:20], codes[:20], SIZES)
    live = LiveSidIndex(sid_map, OFFSET, min_renumber=0, min_garbage_edges=0, background=False)
    start = live.current
    expected = decode(start.trie, start.leaf_items, k=5, beams=5, tied=False)
    state = TrieBeams(start.trie, 1, 5, 5, None)
    prefixes: list[tuple[int, ...]] = [()]
    lp = prefix_logprobs(prefixes, tied=False)
    rng = np.random.default_rng(0)
    while (step := state.advance(lp)) is not None:
        for ad in rng.choice(ids[:20], 6, replace=False).tolist():  # delete and re-add between every step
            if ad in sid_map:
                sid_map.remove(ad)
            sid_map.add(ad, [int(rng.integers(0, 3)), int(rng.integers(0, 4))])
        live.publish()
        prefixes = [(*prefixes[p], t) for p, t in zip(step.parent[0].tolist(), step.tokens[0].tolist(), strict=True)]
        lp = prefix_logprobs(prefixes, tied=False)
    got = [(start.leaf_items[v], s) for v, s in to_results(state.pool_scores, state.pool_values, 5)[0]]
    assert live.trie.compactions > 0 and got == expected


def test_the_real_decoder_returns_the_same_ads_and_scores_as_on_a_rebuilt_trie(one_torch_thread) -> None:
    torch.manual_seed(0)
    model = build_lm(LMConfig(vocab_size=VOCAB + 8, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2))
    search = ConstrainedBeamSearch(model)
    ids, codes = catalogue(25, seed=5)
    sid_map = SemanticIdMap.build(ids[:12], codes[:12], SIZES)
    live = LiveSidIndex(sid_map, OFFSET, min_garbage_edges=0, background=False)
    for ad in ids[12:20]:
        sid_map.add(ad, codes[int(ad[2:])].tolist())
    for ad in ids[:6]:
        sid_map.remove(ad)
    sid_map.add(ids[0], codes[0].tolist())  # re-inserted
    version = live.publish()
    trie, items = rebuilt(sid_map)
    prompts = [[1, 2, 3], [4, 5, 6, 1], [2]]
    for k, beams in [(5, 5), (8, 12)]:
        ours = search.generate(prompts, version.trie, k=k, beams=beams)
        theirs = search.generate(prompts, trie, k=k, beams=beams)
        assert [[(version.leaf_items[v], s) for v, s in row] for row in ours] == [
            [(items[v], s) for v, s in row] for row in theirs
        ]


def test_leaf_items_answer_only_for_the_live_ads_of_their_version() -> None:
    ids, codes = catalogue(6, seed=7)
    sid_map = SemanticIdMap.build(ids, codes, SIZES)
    live = LiveSidIndex(sid_map, OFFSET)
    before = live.current.leaf_items
    leaf = before.leaf_of("ad002")
    sid_map.remove("ad002")
    after = live.publish().leaf_items
    assert "ad002" in before and "ad002" not in after
    assert "ad002" not in {after[v] for _, v in trie_paths(live.current.trie)}
    assert before[leaf] == "ad002"
    with pytest.raises(KeyError, match="no live ad"):
        after[leaf]
    assert len(after) == 5 and set(after) == set(ids) - {"ad002"}
    live_ads = live.current.leaf_items.live
    assert {"ad002", "ad003"} & live_ads == {"ad003"} and live_ads - {"ad003"} == set(ids) - {"ad002", "ad003"}


def test_readers_in_threads_only_ever_see_whole_versions() -> None:
    """A writer publishes batches that each remove one ad and add one; a reader checks each version it
    takes: the trie's leaves are exactly that version's ads, and their number never changes."""
    ids = [f"ad{i:04d}" for i in range(400)]
    rng = np.random.default_rng(11)
    sid_map = SemanticIdMap.build(ids[:200], rng.integers(0, 3, (200, 2)), (3, 3, 64))
    live = LiveSidIndex(sid_map, OFFSET, min_garbage_edges=0, min_renumber=0, background=True)
    done = threading.Event()
    problems: list[str] = []
    seen: set[int] = set()

    def reader() -> None:
        while not done.is_set():
            version = live.current
            leaves = [version.leaf_items[v] for _, v in trie_paths(version.trie)]
            if len(leaves) != 200 or set(leaves) != set(version.leaf_items):
                problems.append(f"version {version.map_version}: {len(leaves)} leaves")
            seen.add(version.map_version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200, 400):
            sid_map.remove(ids[i - 200])
            sid_map.add(ids[i], rng.integers(0, 3, 2).tolist())
            live.publish()
    finally:
        done.set()
        thread.join()
    assert not problems and len(seen) > 1
    live.trie.wait()
    assert_equals_rebuild(live.publish(), sid_map, decodes=False)  # a wider vocabulary than VOCAB


def test_the_docs_figures_are_the_committed_benchmark_json_rendered() -> None:
    """docs/indexing.md's measured block is exactly what bench/bench_index.py renders from the JSON."""
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_index", root / "bench" / "bench_index.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = json.loads((root / "bench" / "results" / "index.json").read_text())
    page = (root / "docs" / "indexing.md").read_text()
    for render in bench.DOC_BLOCKS.values():
        assert render(result) in page
