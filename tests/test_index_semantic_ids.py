import numpy as np
import pytest
import torch

from adgen.index.semantic_ids import (
    CollisionOverflowError,
    SemanticIdError,
    SemanticIdMap,
    global_leaf_map,
    parse_sid,
    sid_tokens,
    sid_vocabulary,
)
from adgen.index.sid_trie import build_fixed_depth_trie
from adgen.index.trie_arrays import TrieArrays, TrieError

SIZES = (4, 4, 3)  # two semantic levels of 4 codes + a collision level of 3


def _paths(trie: TrieArrays) -> dict[tuple[int, ...], int]:
    """Every root-to-leaf token path and its leaf value, read straight off the CSR arrays."""
    indptr, tok, child, leaf = (t.tolist() for t in (trie.indptr, trie.child_token, trie.child_node, trie.leaf_value))
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    while stack:
        node, path = stack.pop()
        if indptr[node] == indptr[node + 1]:
            out[path] = leaf[node]
        for e in range(indptr[node], indptr[node + 1]):
            stack.append((child[e], (*path, tok[e])))
    return out


def _arrays_equal(a: TrieArrays, b: TrieArrays) -> bool:
    fields = ("indptr", "child_token", "child_node", "leaf_value")
    same = all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)
    return same and (a.max_depth, a.max_children) == (b.max_depth, b.max_children)


def test_sid_tokens_and_vocabulary_follow_the_shared_spec() -> None:
    assert sid_tokens((51, 10, 67, 93, 0)) == ["<a_51>", "<b_10>", "<c_67>", "<d_93>", "<e_0>"]
    vocab = sid_vocabulary((2, 3, 2))
    assert vocab == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>", "<c_0>", "<c_1>"]
    assert parse_sid("".join(sid_tokens((3, 1, 0)))) == (3, 1, 0)
    with pytest.raises(SemanticIdError, match="level 0"):
        parse_sid("<b_1><a_2>")


def test_items_round_trip_through_their_sids() -> None:
    sid_map = SemanticIdMap.build(["x", "y", "z"], np.array([[1, 2], [1, 2], [3, 0]]), SIZES)
    for item in ("x", "y", "z"):
        assert sid_map.item_of(sid_map.sid_of(item)) == item
    assert sid_map.sid_of("x") == (1, 2, 0) and sid_map.sid_of("y") == (1, 2, 1)
    with pytest.raises(KeyError, match="'nope' is not in"):
        sid_map.sid_of("nope")


def test_collision_codes_make_every_sid_unique_and_overflow_is_a_clear_error() -> None:
    sid_map = SemanticIdMap(SIZES)
    sids = {sid_map.add(f"i{n}", (2, 2)) for n in range(3)}
    assert sids == {(2, 2, 0), (2, 2, 1), (2, 2, 2)}
    with pytest.raises(CollisionOverflowError, match=r"all 3 collision codes under semantic prefix \(2, 2\)"):
        sid_map.add("i3", (2, 2))
    sid_map.remove("i1")
    assert sid_map.add("i3", (2, 2)) == (2, 2, 1)  # the freed code is the next free one


def test_bad_codes_and_duplicates_are_refused() -> None:
    sid_map = SemanticIdMap(SIZES)
    with pytest.raises(SemanticIdError, match="outside"):
        sid_map.add("a", (4, 0))
    with pytest.raises(SemanticIdError, match="expects 2"):
        sid_map.add("a", (1, 0, 0))
    sid_map.add("a", (1, 1))
    with pytest.raises(SemanticIdError, match="already indexed"):
        sid_map.add("a", (0, 0))


def test_building_twice_gives_the_same_sids_whatever_the_input_order() -> None:
    rng = np.random.default_rng(0)
    ids = [f"ad{n}" for n in range(60)]
    codes = rng.integers(0, 3, (60, 2))
    first = SemanticIdMap.build(ids, codes, (3, 3, 16))
    perm = rng.permutation(60)
    second = SemanticIdMap.build([ids[i] for i in perm], codes[perm], (3, 3, 16))
    assert {i: first.sid_of(i) for i in ids} == {i: second.sid_of(i) for i in ids}


def test_vectorised_trie_holds_the_same_paths_as_the_reference_builder() -> None:
    rng = np.random.default_rng(1)
    tokens = np.unique(rng.integers(0, 5, (80, 3)), axis=0)
    rng.shuffle(tokens)
    values = np.arange(len(tokens))
    fast = build_fixed_depth_trie(tokens, values)
    ref = TrieArrays.from_sequences(tokens.tolist(), values.tolist())
    assert _paths(fast) == _paths(ref) and len(_paths(fast)) == len(tokens)
    assert fast.num_nodes == ref.num_nodes and fast.max_children == ref.max_children
    nodes = torch.arange(ref.num_nodes)
    # same set of children below the root, whichever node numbering each builder uses
    assert torch.equal(fast.allowed_mask(nodes[:1], 5), ref.allowed_mask(nodes[:1], 5))
    with pytest.raises(TrieError, match="duplicate"):
        build_fixed_depth_trie(np.array([[1, 2], [1, 2]]), np.array([0, 1]))


def test_trie_uses_token_offset_and_maps_leaves_back_to_items() -> None:
    sid_map = SemanticIdMap.build(["p", "q", "r"], np.array([[0, 1], [3, 2], [0, 1]]), SIZES)
    trie, leaf_items = sid_map.trie_arrays(token_offset=100)
    vocab = sid_vocabulary(SIZES)
    for item in ("p", "q", "r"):
        tokens = [100 + vocab.index(t) for t in sid_tokens(sid_map.sid_of(item))]
        node = torch.tensor([0])
        for tok in tokens:
            node = trie.step(node, torch.tensor([tok]))
        assert leaf_items[int(trie.leaf_value[node])] == item
    assert trie.allowed_mask(torch.tensor([0]), 100 + len(vocab))[0].nonzero().flatten().tolist() == [100, 103]


def test_incremental_inserts_and_deletes_equal_a_rebuild() -> None:
    rng = np.random.default_rng(2)
    ids = [f"ad{n:03d}" for n in range(200)]
    codes = rng.integers(0, 4, (200, 2))
    live = SemanticIdMap.build(ids[:120], codes[:120], (4, 4, 32))
    before, _ = live.trie_arrays()
    for i in range(120, 200):
        live.add(ids[i], codes[i].tolist())
    removed = set(rng.choice(200, 50, replace=False).tolist())
    for i in sorted(removed):
        live.remove(ids[i])
    kept = [i for i in range(200) if i not in removed]
    assert live.version > 120
    # a rebuild from the live S-IDs (what a snapshot restore does) yields identical arrays
    sids, items = live.to_arrays()
    restored = SemanticIdMap.from_arrays(sids, items, (4, 4, 32))
    trie, leaf_items = live.trie_arrays()
    trie2, leaf_items2 = restored.trie_arrays()
    assert _arrays_equal(trie, trie2) and leaf_items == leaf_items2
    assert sorted(leaf_items) == sorted(ids[i] for i in kept)
    # and the trie holds exactly the live S-IDs, each leading to its own item
    paths = _paths(trie)
    assert {leaf_items[v] for v in paths.values()} == {ids[i] for i in kept}
    offsets = np.array([0, 4, 8])
    assert all(tuple(np.array(live.sid_of(leaf_items[v])) + offsets) == p for p, v in paths.items())
    # the version the decoder held before the updates is untouched (immutable per version)
    assert before.num_values == 120


def test_inserting_in_id_order_equals_building_the_whole_catalogue() -> None:
    rng = np.random.default_rng(3)
    ids = [f"ad{n:03d}" for n in range(100)]
    codes = rng.integers(0, 3, (100, 2))
    live = SemanticIdMap.build(ids[:70], codes[:70], (3, 3, 32))
    for i in range(70, 100):
        live.add(ids[i], codes[i].tolist())
    full = SemanticIdMap.build(ids, codes, (3, 3, 32))
    assert _arrays_equal(live.trie_arrays(7)[0], full.trie_arrays(7)[0])
    assert live.trie_arrays(7)[1] == full.trie_arrays(7)[1]


def test_bulk_build_equals_adding_one_by_one_in_item_id_order() -> None:
    rng = np.random.default_rng(4)
    ids = [f"x{n}" for n in rng.permutation(300)]
    codes = rng.integers(0, 3, (300, 2))
    bulk = SemanticIdMap.build(ids, codes, (3, 3, 64))
    one_by_one = SemanticIdMap((3, 3, 64))
    for i in sorted(range(300), key=ids.__getitem__):
        one_by_one.add(ids[i], codes[i].tolist())
    assert {i: bulk.sid_of(i) for i in ids} == {i: one_by_one.sid_of(i) for i in ids}
    assert _arrays_equal(bulk.trie_arrays()[0], one_by_one.trie_arrays()[0])
    bulk.remove(ids[0])  # the bulk-built map stays a normal live map
    assert bulk.add(ids[0], codes[0].tolist()) == one_by_one.sid_of(ids[0])


def test_bulk_build_reports_overflow_and_duplicates() -> None:
    with pytest.raises(CollisionOverflowError, match=r"'c': all 2 collision codes under semantic prefix \(1, 1\)"):
        SemanticIdMap.build(["b", "a", "c"], np.array([[1, 1]] * 3), (2, 2, 2))
    with pytest.raises(SemanticIdError, match="'a' appears more than once"):
        SemanticIdMap.build(["a", "a"], np.array([[0, 0], [1, 1]]), (2, 2, 2))
    with pytest.raises(SemanticIdError, match="outside"):
        SemanticIdMap.build(["a"], np.array([[0, 5]]), (2, 2, 2))


def test_global_leaves_give_every_ad_its_own_last_code_and_new_ads_never_share_one() -> None:
    codes = np.array([[0, 1], [0, 1], [2, 3], [0, 1]])  # three ads share one semantic prefix
    prefix_map = SemanticIdMap.build(["d", "b", "c", "a"], codes, (4, 4, 3))
    leaf_map = global_leaf_map(prefix_map)
    assert leaf_map.leaf_scope == "global" and leaf_map.codebook_sizes[:-1] == (4, 4)
    assert [leaf_map.sid_of(i) for i in "abcd"] == [(0, 1, 0), (0, 1, 1), (2, 3, 2), (0, 1, 3)]  # item-id order
    leaf_map.remove("c")
    assert leaf_map.add("e", (3, 3)) == (3, 3, 2)  # the lowest code no live ad holds, under any prefix
    assert leaf_map.add("f", (2, 3)) == (2, 3, 4)  # a prefix-scope map would have given it code 0 (held by "a")
    sids, ids = leaf_map.to_arrays()
    restored = SemanticIdMap.from_arrays(sids, ids, leaf_map.codebook_sizes, leaf_scope="global")
    assert restored.add("g", (1, 1)) == (1, 1, 5)
    with pytest.raises(SemanticIdError, match="held by another item"):
        SemanticIdMap.from_arrays(np.array([[0, 0, 1], [1, 1, 1]]), ["x", "y"], (4, 4, 16), leaf_scope="global")
    full = SemanticIdMap.from_arrays(np.array([[0, 0, 0]]), ["x"], (4, 4, 1), leaf_scope="global")
    with pytest.raises(CollisionOverflowError, match="in the index are taken"):
        full.add("y", (1, 1))
