"""The service's shared layer, below both ``api`` and ``worker``.

- ``settings``: configuration from ``PGD_*`` environment variables.
- ``db``: the SQLAlchemy models (the schema is made only by ``migrations/``),
  engines and sessions.
- ``lifecycle``: jobs that wait for their teacher (released or failed when it ends).
- ``queue``: the queue contract: the task's name, the queues, publishing a job
  through Celery's ``send_task``.
- ``maintenance``: the reaper, the re-sender, the revoker (one pass or a thread).

It imports neither FastAPI nor torch (tests/test_layering.py).
"""
