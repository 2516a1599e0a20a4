"""The one wall clock of the system: aware UTC datetimes (every timestamp we store or compare is UTC)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)
