"""A tiny CI build shared by the tests that run the search path in a worker or swap its CI model: three lab CIs,
a CI model trained in seconds that maps their queries and ad texts onto them, and a CI index of three seed ads
(the layout `adgen ci build` writes under <paths.index>/ci)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from adgen.datasets import item_from_upsert
from adgen.search.ci_data import AD_PROMPT, QUERY_PROMPT, TextPair, ad_prompt_text
from adgen.search.ci_index import CIIndex, CISet, save_snapshot
from adgen.search.ci_model import CIModel, CIModelConfig, train_ci_model
from adgen.streams.events import AdUpsert

CIS = ["nitrile gloves", "glass beakers", "digital multimeter"]
VERSION = "restart-test"  # the CI-set version of the build's index
T0 = datetime(2026, 11, 2, tzinfo=UTC)


def lab_ad(ad_id: str, ci_text: str, seconds: int = 0) -> AdUpsert:
    return AdUpsert(
        event_id=f"up-{ad_id}",
        event_time=T0.replace(second=seconds),
        ad_id=ad_id,
        name=f"acme {ci_text} pro",
        category_path=["Lab", ci_text],
        ecpm=1.0,
    )


def lab_ci_set() -> CISet:
    return CISet(texts=CIS, support=[1] * len(CIS), aliases={t: i for i, t in enumerate(CIS)})


def train_lab_ci_model(out: Path, seed: int = 0) -> CIModel:
    """A CI model that maps the CIs' queries and ad texts onto their CI (saved under out/model); `seed` gives
    another model of the same tokenizer."""
    fmt = [TextPair(prompt=QUERY_PROMPT.format(text=t), response=t, stage="format") for t in CIS]
    fmt += [
        TextPair(
            prompt=AD_PROMPT.format(text=ad_prompt_text(item_from_upsert(lab_ad("x", t)))), response=t, stage="format"
        )
        for t in CIS
    ]
    config = CIModelConfig(
        vocab_size=320, hidden_size=32, num_layers=1, num_heads=2, format_epochs=40, batch_size=16, seed=seed
    )
    model, _ = train_ci_model([], fmt, lab_ci_set(), out, config)
    return model


def write_ci_build(ci_root: Path, head_cache: dict[str, object] | None = None) -> CIModel:
    """The CI model under ci_root/model and a snapshot of three seed ads (one per CI) with `head_cache`."""
    model = train_lab_ci_model(ci_root / "train")
    model.save(ci_root / "model")
    index = CIIndex(lab_ci_set(), version=VERSION)
    index.update({f"seed-{i}": {i: 1.0} for i in range(len(CIS))})
    save_snapshot(ci_root / "snapshots", index, model.ci_sequences(index.ci_set), head_cache or {}, model.fingerprint())
    return model
