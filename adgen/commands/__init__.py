"""CLI sub-apps, one module per area."""
