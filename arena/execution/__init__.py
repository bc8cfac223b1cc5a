"""The execution layer: running a round's jobs, in this process or on Celery workers.

Imports point one way: ``jobs`` (one job) <- ``rounds`` (a round's state) <- ``local`` (the local
executor) and ``dispatch`` (sending jobs, leases) <- ``tasks`` (the Celery app) <- ``follow`` (following a
distributed round) and ``workers`` (``arena worker``, ``arena scheduler``).
"""
