"""`adgen index` end to end on a tiny catalogue with the real offline encoder (no servers needed)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from adgen.cli import app
from adgen.core.catalogue import Item

runner = CliRunner()
CATEGORIES = {
    "Fasteners": ["stainless steel staples", "wood screws", "hex bolts", "wall anchors", "rivets", "nails"],
    "Lab Supplies": ["glass beakers", "pipette tips", "petri dishes", "test tubes", "lab gloves", "funnels"],
    "Tapes": ["duct tape", "masking tape", "electrical tape", "double sided tape", "painter's tape", "foil tape"],
}


def _items() -> list[Item]:
    return [
        Item(item_id=f"{cat[:3].lower()}{n}", title=title.title(), categories=("Industrial & Scientific", cat))
        for cat, titles in CATEGORIES.items()
        for n, title in enumerate(titles)
    ]


def _write(path: Path, items: list[Item]) -> Path:
    path.write_text("".join(i.model_dump_json() + "\n" for i in items))
    return path


def _run(*args: str) -> dict:
    result = runner.invoke(app, ["index", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADGEN_PATHS__MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("ADGEN_PATHS__EMBEDDING_CACHE", str(tmp_path / "cache"))
    return tmp_path


BUILD = ("--levels", "2", "--codebook-size", "4", "--epochs", "20")


def test_build_add_remove_stats_and_a_corrupt_snapshot(env: Path) -> None:
    catalogue = _write(env / "items.jsonl", _items())
    index = str(env / "index")
    built = _run("build", "--jsonl", str(catalogue), "--index", index, *BUILD)
    assert built["version"] == 1 and built["items"] == 18 and built["codebook_sizes"][:2] == [4, 4]
    assert built["codebook_sizes"][2] >= 2 * built["max_collisions"]  # auto-sized collision level has headroom

    first = _run("stats", "--index", index)
    assert first["items"] == 18 and first["trie_bytes_per_ad"] > 0 and first["refused_newer"] is None

    new = Item(item_id="tap9", title="Kapton Tape", categories=("Industrial & Scientific", "Tapes"))
    unchanged = _items()[0]
    added = _run("add", str(_write(env / "new.jsonl", [new, unchanged])), "--index", index)
    assert added["version"] == 2 and len(added["assigned"]["tap9"]) == 3
    v1_sids = np.load(env / "index" / "v00000001" / "sids.npy")
    v1_items = json.loads((env / "index" / "v00000001" / "items.json").read_text())
    assert added["assigned"][unchanged.item_id] == v1_sids[v1_items.index(unchanged.item_id)].tolist()

    removed = _run("remove", "fas0", "lab1", "--index", index)
    assert removed == {"version": 3, "removed": ["fas0", "lab1"], "items": 17}

    bad = runner.invoke(app, ["index", "remove", "nope", "--index", index])
    assert bad.exit_code == 1 and "not in the index" in bad.output

    sids = env / "index" / "v00000003" / "sids.npy"
    sids.write_bytes(sids.read_bytes()[:-4] + b"\xff\xff\xff\xff")
    after = _run("stats", "--index", index)
    assert after["version"] == 2 and after["items"] == 19 and "sids.npy is corrupt" in after["refused_newer"]


def test_rebuilding_the_same_catalogue_gives_the_same_sids(env: Path) -> None:
    catalogue = _write(env / "items.jsonl", _items())
    for name in ("a", "b"):
        _run("build", "--jsonl", str(catalogue), "--index", str(env / name), *BUILD)
    for name in ("sids.npy", "items.json", "trie_child_token.npy"):
        assert (env / "a" / "v00000001" / name).read_bytes() == (env / "b" / "v00000001" / name).read_bytes()


def test_build_needs_exactly_one_source(env: Path) -> None:
    result = runner.invoke(app, ["index", "build", "--index", str(env / "i")])
    assert result.exit_code != 0 and "exactly one source" in result.output


def test_too_small_collision_level_is_a_clear_build_error(env: Path) -> None:
    catalogue = _write(env / "items.jsonl", _items())
    args = ["index", "build", "--jsonl", str(catalogue), "--index", str(env / "i"), *BUILD, "--collision-size", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "collision level of 1 codes is too small" in result.output
    assert not (env / "i").exists()


def _amazon_dir(root: Path) -> Path:
    """The tiny catalogue in the Amazon (LC-Rec) layout, with users who buy within a category."""
    root.mkdir()
    items = _items()
    raw = {
        i.item_id: {"title": i.title, "description": "", "brand": "", "categories": ",".join(i.categories)}
        for i in items
    }
    (root / "Tiny.item.json").write_text(json.dumps(raw))
    by_cat = [[i.item_id for i in items if i.categories[1] == cat] for cat in CATEGORIES]
    users = {f"u{n}": [group[(n + j) % 6] for j in range(5)] for n, group in enumerate(by_cat * 8)}
    (root / "Tiny.inter.json").write_text(json.dumps(users))
    return root


def test_collaborative_build_codes_new_ads_from_their_text_alone(env: Path) -> None:
    index = str(env / "index")
    built = _run(
        "build", "--amazon", str(_amazon_dir(env / "amazon")), "--index", index, "--collaborative", "1.0", *BUILD
    )
    assert built["items"] == 18
    from adgen.index.ad_index import AdIndex
    from adgen.index.snapshot import INDEX_KIND, SnapshotStore

    live = AdIndex.load_latest(SnapshotStore(Path(index), kind=INDEX_KIND))
    assert live.rqvae.config.text_dim == 384 and live.rqvae.config.input_dim == 384 + 64
    assert np.abs(live.rqvae.text_to_collab.numpy()).sum() > 0  # the text -> collaborative map ships in the weights
    new = Item(item_id="tap9", title="Kapton Tape", categories=("Industrial & Scientific", "Tapes"))
    added = _run("add", str(_write(env / "new.jsonl", [new])), "--index", index)
    assert added["version"] == 2 and len(added["assigned"]["tap9"]) == 3
    codes = live.rqvae.codes(live.rqvae.input_from_text(live_text_embedding(env, new)))
    assert added["assigned"]["tap9"][:2] == codes[0].tolist()  # coded as [text, predicted collaborative]


def live_text_embedding(env: Path, item: Item) -> np.ndarray:
    from adgen.core.ad_text import ad_text
    from adgen.model.encoder import CachedEncoder, load_encoder

    return CachedEncoder(load_encoder("all-MiniLM-L6-v2"), env / "cache").encode([ad_text(item)], progress=False)


def test_collaborative_build_needs_behaviour(env: Path) -> None:
    result = runner.invoke(
        app,
        [
            "index",
            "build",
            "--jsonl",
            str(_write(env / "i.jsonl", _items())),
            "--index",
            str(env / "index"),
            "--collaborative",
            "1.0",
            *BUILD,
        ],
    )
    assert result.exit_code == 1 and "needs behaviour" in result.output
