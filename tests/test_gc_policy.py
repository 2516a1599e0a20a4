"""processors/gc_policy.py: long-lived objects leave the cyclic collector's walk; garbage is collected, not frozen."""

from __future__ import annotations

import gc
import weakref

from adgen.processors.gc_policy import freeze_long_lived


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_freezing_collects_garbage_first_then_moves_every_tracked_object_out_of_the_walk() -> None:
    gc.unfreeze()
    try:
        garbage = _Node()
        freed = weakref.ref(garbage)
        del garbage
        assert freed() is not None  # unreachable, yet alive: reference counting cannot free a cycle
        frozen = freeze_long_lived(collect=True)
        assert freed() is None  # collected before the freeze, not kept forever
        assert frozen == gc.get_freeze_count() > 0
        kept = [_Node() for _ in range(100)]  # made after the freeze: tracked by the collector again
        assert gc.get_freeze_count() == frozen
        assert freeze_long_lived(collect=False) >= frozen + len(kept)  # a later freeze takes them too
    finally:
        gc.unfreeze()
