"""Shared fixtures. Server fixtures (embedded broker + redis-server) live in tests/fixtures_runtime.py."""
