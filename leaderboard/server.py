"""The board's production server: gunicorn, its processes forked from one loaded app.

The app is made once, before the fork (``preload_app``), so every process shares its sign-in key and
settings; each process opens its own database connections (:class:`arena.store.Database` drops the
parent's after a fork). The board is read-only, so any number of processes may serve it.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from leaderboard import create_app


class Server(BaseApplication):
    """gunicorn serving ``app`` with ``options`` (gunicorn's settings by name)."""

    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.app, self.options = app, options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.app


def serve(host: str, port: int, workers: int, app: Flask | None = None, access_log: bool = True) -> None:
    """Serve the board (``app``, else the one the environment configures) on ``host:port`` with ``workers``
    processes until stopped; each request is logged on stdout unless ``access_log`` is false."""
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "preload_app": True,
        "timeout": 60,
        "accesslog": "-" if access_log else None,
        "proc_name": "arena-board",
    }
    Server(app or create_app(), options).run()
