"""Keep Python's cyclic garbage collector off the worker's long-lived catalogue and index.

Why: the worker holds millions of long-lived objects (the catalogue's items, the live index's maps). A full
(generation-2) collection walks every one of them: measured here with 1M catalogue items, 6.6 s with the event
loop blocked, which was the 7.9 s outlier among bench/bench_index.py's 300 ad batches (median 19 ms). Those
objects never become cyclic garbage while the worker runs, so they are moved to the collector's permanent
generation (`gc.freeze`): reference counting still frees them, the collector no longer walks them.

- `freeze_long_lived(collect=True)` once the worker is built (index restored, model loaded): one collection
  first, so no garbage is frozen;
- `freeze_long_lived(collect=False)` after each index snapshot: what the batches since added is long-lived too.
  No collection there (it would block the loop for as long as the one being avoided); `gc.freeze` itself only
  moves the collector's lists.
"""

from __future__ import annotations

import gc


def freeze_long_lived(collect: bool) -> int:
    """Move every object the collector tracks now to its permanent generation; returns how many are frozen."""
    if collect:
        gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
