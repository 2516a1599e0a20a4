"""Runs the documents cite but that are owed: too heavy for the loaded machine they were written on.

Each entry names the command that makes the JSON (run it under the lock, `flock /tmp/adgen-quiet.lock
nice -n 19 ...`, on a quiet machine, then `adgen bench report`) and how long it takes there. Until the file
is committed (or, for a file of an older shape, until it is the new run's), every figure from it renders as
a "not measured yet" note with the command: no older number stands in for it. An entry whose file is
committed and ready has no effect; delete it then.
"""

from __future__ import annotations

from typing import Any

from adgen.figures.sources import PENDING, Pending


def _decoder_is_fair(data: Any) -> bool:
    """The fair baseline (issue 17): HF and ours timed alike over a batch sweep, each at its best batch."""
    return "run" in data and all("a_best_batch" in m and "batch_sweep" in m for m in data.get("models", []))


def _soak_has_verdicts(data: Any) -> bool:
    """The soak with capacity-relative garbage, a warm-up RSS point and search probes (issue 17)."""
    return "verdicts" in data and "figures" in data and "capacity" in data


PENDING.update(
    {
        "bench/results/decoder.json": Pending(
            ".venv/bin/python bench/bench_decoder.py --threads 2 --repeats 3 --out bench/results/decoder.json",
            45,
            _decoder_is_fair,
            "the committed run timed HF `generate` once, without warm-up, in batches of 4",
        ),
        "bench/results/worker-200-users.json": Pending(
            ".venv/bin/python bench/bench_worker.py --skip generation --users 200"
            " --out bench/results/worker-200-users.json",
            6,
        ),
        "bench/results/commands.json": Pending(
            ".venv/bin/python bench/bench_commands.py --out bench/results/commands.json", 25
        ),
        "docs/data/soak/soak.json": Pending(
            ".venv/bin/python bench/soak.py --minutes 12 --out docs/data/soak/soak.json",
            17,
            _soak_has_verdicts,
            "the committed run offered garbage at a trickle and served no search query",
        ),
        "docs/data/soak/soak-injected-leak.json": Pending(
            ".venv/bin/python bench/soak.py --minutes 4 --warmup-s 60 --inject leak:90"
            " --out docs/data/soak/soak-injected-leak.json",
            8,
        ),
        "docs/data/soak/soak-injected-slow-garbage.json": Pending(
            ".venv/bin/python bench/soak.py --minutes 4 --warmup-s 60 --inject slow-garbage:0.001"
            " --out docs/data/soak/soak-injected-slow-garbage.json",
            8,
        ),
        "docs/data/reliability/results.json": Pending(
            "ADGEN_RECORD_RESULTS=docs/data/reliability/results.json .venv/bin/python -m pytest -m 'slow or not slow'"
            " tests/reliability tests/test_fuzz_decoders.py tests/test_fuzz_search_view.py tests/test_codec.py"
            " tests/test_feature_store.py tests/test_window_consumer.py tests/test_security.py",
            90,
        ),
        "docs/data/index-quality/report.json": Pending(
            ".venv/bin/python bench/index_quality.py --out docs/data/index-quality", 8
        ),
        "docs/data/index-quality/build_report.json": Pending(
            ".venv/bin/python bench/index_quality.py --out docs/data/index-quality", 8
        ),
        "docs/data/index-quality/run.json": Pending(
            ".venv/bin/python bench/index_quality.py --out docs/data/index-quality", 8
        ),
    }
)
