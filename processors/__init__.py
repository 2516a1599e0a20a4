"""Faust agents: behaviour windows, generation, live ad indexing, query retrieval, snapshots."""
