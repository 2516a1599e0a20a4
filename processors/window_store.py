"""The worker's local window state: one RocksDB (rocksdict) holding window rows per user-behavior partition.

Keys are `r<partition byte><user id>` for rows and `p<partition byte>` for the changelog position of that
partition: the changelog offset up to which the local rows are exactly the changelog's content. Rows and
position are written in one WriteBatch, so after a crash the position never claims rows that are missing
(the changelog holds every row before RocksDB sees it; restoring from the position re-reads the rest).

Rows of revoked partitions are kept with their position: when the partition comes back, restoring from
that position to the changelog's end brings in whatever another worker wrote meanwhile.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

ROW, POSITION = b"r", b"p"
#: Memory bound of the store: two memtables of this size plus the block cache (~64 MiB in all).
MEMTABLE_BYTES = 16 * 2**20
BLOCK_CACHE_BYTES = 32 * 2**20
_OFFSET = struct.Struct(">q")


def _row_key(partition: int, user_id: bytes) -> bytes:
    return ROW + bytes((partition,)) + user_id


class WindowStore:
    """Window rows (bytes, `UserWindow.to_bytes`) by (partition, user id), and changelog positions."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        # bounded memory by construction: RocksDB's defaults (64 MiB memtables, several of them) let a
        # worker's RSS creep for many minutes of steady traffic before the first flush
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        table = BlockBasedOptions()
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_cache_index_and_filter_blocks(True)
        options.set_block_based_table_factory(table)
        self.path = path
        self.db = Rdict(str(path), options)

    def close(self) -> None:
        self.db.close()

    def get_many(self, partition: int, user_ids: Sequence[bytes]) -> list[bytes | None]:
        """Rows of `user_ids` in `partition` (None where the user has no row yet); one multi-get."""
        return self.db.get([_row_key(partition, u) for u in user_ids])  # type: ignore[no-any-return]

    def position(self, partition: int) -> int:
        """Next changelog offset the local rows of `partition` have not seen (0: nothing restored yet)."""
        raw = self.db.get(POSITION + bytes((partition,)))
        return 0 if raw is None else int(_OFFSET.unpack(raw)[0])

    def write(self, partition: int, rows: Iterable[tuple[bytes, bytes]], position: int | None) -> None:
        """Put (user id, row) pairs and, if given, the new changelog position, atomically."""
        batch = WriteBatch(raw_mode=True)
        for user_id, row in rows:
            batch.put(_row_key(partition, user_id), row)
        if position is not None:
            batch.put(POSITION + bytes((partition,)), _OFFSET.pack(position))
        self.db.write(batch)

    def drop_partition(self, partition: int) -> None:
        """Forget a partition's rows and position (its next restore reads the whole changelog partition)."""
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(ROW + bytes((partition,)), ROW + bytes((partition + 1,)))
        batch.delete(POSITION + bytes((partition,)))
        self.db.write(batch)

    def rows(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """Every (user id, row) of `partition`, e.g. to re-queue unserved ad requests after a restart."""
        prefix = ROW + bytes((partition,))
        it = self.db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                break
            yield key[len(prefix) :], it.value()
            it.next()
