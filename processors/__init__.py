"""The worker: one component per input path and duty (worker_app.py wires them), and the Redis contract."""
