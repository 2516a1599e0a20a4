"""What the running system stored about its users, read back for retraining: the window changelog.

The compacted `user-windows-changelog` topic holds every user's newest window row (every worker writes its
partitions' rows there before anything else sees a batch), so it is the whole population's behaviour as
the system itself kept it, independent of which worker holds which partition. It is read with the very
restorer a worker uses after a rebalance (processors/window_changelog.py) into a scratch RocksDB: each
partition from its start to a marker written now, so "the end" is exact even where a broker's high
watermark reads low, and rows written later are simply not part of this read.
"""

from __future__ import annotations

import threading
from pathlib import Path

from adgen.core.config import Settings
from adgen.processors.behavior_windows import windows_in_store
from adgen.processors.window_changelog import AckedProducer, ChangelogRestorer
from adgen.processors.window_state import UserWindow
from adgen.processors.window_store import WindowStore
from adgen.streams.topics import WINDOW_CHANGELOG


def read_stored_windows(settings: Settings, scratch: Path) -> dict[str, UserWindow]:
    """Every user's newest window row in the changelog (user id -> window); `scratch` holds a temporary RocksDB."""
    store = WindowStore(Path(scratch) / "windows")
    writer = AckedProducer(settings, threading.Event())
    restorer = ChangelogRestorer(settings, store, writer)
    partitions = range(WINDOW_CHANGELOG.partitions)
    try:
        for partition in partitions:
            restorer.restore(partition)
        return {w.user_id: w for w in windows_in_store(store, partitions)}
    finally:
        restorer.close()
        writer.close()
        store.close()
