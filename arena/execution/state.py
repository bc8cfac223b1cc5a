"""A worker's state: what one process of an executor keeps from job to job, made by the executor and closed once.

The local executor makes one for its round (:func:`arena.execution.local.run_local`), a Celery worker one for its
life (:mod:`arena.execution.tasks`); each passes it down to what plays a job (:func:`arena.execution.jobs.execute`).
Nothing else keeps state between jobs: no module holds a cache.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from arena.execution.inputs import Inputs
from arena.play.warm import Warm
from arena.store import Database


class WorkerState:
    """The warm parts of matches (:class:`arena.play.warm.Warm`), the inputs read from each database
    (:class:`arena.execution.inputs.Inputs`) and the databases a worker opened by URL."""

    def __init__(self) -> None:
        self.warm = Warm()
        self._inputs: WeakKeyDictionary[Database, Inputs] = WeakKeyDictionary()
        self._databases: dict[str, Database] = {}

    def inputs(self, db: Database) -> Inputs:
        """The matches' inputs this worker has read from ``db`` (ids and keys mean nothing across databases)."""
        return self._inputs.setdefault(db, Inputs())

    def database(self, url: str) -> Database:
        """The database at ``url``, opened once."""
        if url not in self._databases:
            self._databases[url] = Database(url)
        return self._databases[url]

    def close(self) -> None:
        """Close the warm processes, forget the inputs, and release the databases' connections."""
        self.warm.close()
        self._inputs.clear()
        for db in self._databases.values():
            db.dispose()
        self._databases.clear()

    def __enter__(self) -> WorkerState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
