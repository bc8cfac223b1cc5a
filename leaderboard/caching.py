"""Caching: rendered pages kept by the state of their data, and HTTP caching headers.

Pages whose data comes from scored rounds (overview, matrix, history) name that state (a
:class:`Page`'s ``state``): a page or JSON body rendered from one state is kept and served again
until the state changes, so a busy board renders each page once per change of its round.
Pages without such a state (a plugin's or a team's page, the class status, the round in play) are
kept for the public by :func:`public` while the data's fingerprint stays the same (checked at most every
refresh time: :class:`Recent`); robustness curves by the set of results they are drawn from (:class:`Kept`).

Every page and API answer carries an ETag (a repeated request costs a 304), and what cannot change
says so in ``Cache-Control``:

* A frozen round (published and done) never changes: asked for by number, its pages may be kept for
  :data:`FROZEN_ROUND` (only the list of newer rounds in the header could go stale).
* A match's result is written once: its page for a day, its gallery images for good.
* Everything else is revalidated on every view (``no-cache``): the ETag still spares the body.
* A signed-in viewer's pages (which show its logs) are ``private``, never kept in the shared cache above.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flask import Flask, Response, current_app, g, render_template, request, session

from leaderboard.lookup import data_state, database

FROZEN_ROUND = "public, max-age=300"
MATCH = "public, max-age=86400"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
PRIVATE = "private, no-cache"


@dataclass(frozen=True)
class Page:
    """A page's data and the state it was made from: equal states, equal data (``None``: never reuse)."""

    data: dict[str, Any]
    state: Hashable | None = None


def state(name: str, serials: object, data: Mapping[str, Any], *made_from_serials: str) -> tuple[str, str, str]:
    """A page state: its name, the serials of the scored rounds it shows, and the rest of its data
    (all but the keys ``made_from_serials``, which the serials stand for) as canonical JSON."""
    rest = {key: value for key, value in data.items() if key not in made_from_serials}
    return name, repr(serials), json.dumps(rest, sort_keys=True, default=str)


T = TypeVar("T")


class Kept(Generic[T]):
    """Values made once per key (rendered bodies, figures of results written once), the ``capacity`` most
    recently used, safe to share between threads."""

    def __init__(self, capacity: int = 128) -> None:
        self.capacity = capacity
        self._bodies: OrderedDict[Hashable, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The value kept under ``key``, else ``make()``, kept."""
        with self._lock:
            if key in self._bodies:
                self._bodies.move_to_end(key)
                return self._bodies[key]
        body = make()
        with self._lock:
            self._bodies[key] = body
            while len(self._bodies) > self.capacity:
                self._bodies.popitem(last=False)
        return body


class Recent(Generic[T]):
    """Values by key with the state of the data they were made from (the ``capacity`` most recently made),
    safe to share between threads, for pages without a state of their own (a plugin's page, the class
    status): a value less than ``ttl`` seconds old is served as it is; an older one is made again only if
    the state changed meanwhile, so such a page lags the database by at most ``ttl`` while a round runs and
    is never made twice while nothing changes."""

    def __init__(self, ttl: float, capacity: int = 1024) -> None:
        self.ttl, self.capacity = ttl, capacity
        self._values: OrderedDict[Hashable, tuple[float, Hashable, T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], T], state: Callable[[], Hashable]) -> T:
        """The value kept for ``key`` if it is recent or ``state()`` has not changed since; else ``make()``, kept."""
        with self._lock:
            found = self._values.get(key)
        if found is not None and time.monotonic() - found[0] < self.ttl:
            return found[2]
        now = state()
        value = found[2] if found is not None and found[1] == now else make()
        with self._lock:
            self._values[key] = (time.monotonic(), now, value)
            self._values.move_to_end(key)
            while len(self._values) > self.capacity:
                self._values.popitem(last=False)
        return value


def public(key: Hashable, make: Callable[[], T]) -> T:
    """``make()``, shared between the public's requests while the board's data stays the same (checked at
    most every refresh time: :class:`Recent`); a signed-in viewer's data, which shows its own, is made for
    it every time."""
    if "token" in session:
        return make()

    def state() -> Hashable:
        with database().session() as db_session:
            return data_state(db_session)

    return current_app.extensions["arena_recent"].get(key, make, state)


def html(template: str, page: Page) -> str:
    """``template`` rendered with the page's data, once per page state (not kept for a signed-in viewer,
    whose pages name them)."""
    if page.state is None or "token" in session:
        return render_template(template, **page.data)
    return _rendered().get(("html", template, page.state), lambda: render_template(template, **page.data))


def as_json(page: Page) -> Response:
    """The page's data as a JSON response, encoded once per page state."""

    def encode() -> str:
        return current_app.json.dumps(page.data) + "\n"

    body = encode() if page.state is None else _rendered().get(("json", page.state), encode)
    return current_app.response_class(body, mimetype=current_app.json.mimetype)


def _rendered() -> Kept[str]:
    return current_app.extensions["arena_rendered"]


def kept(name: str) -> Kept[Any]:
    """The app's store of values made once per key, by name (see :func:`init_app`)."""
    return current_app.extensions[f"arena_kept_{name}"]


def cache(policy: str) -> None:
    """Answer the current request with ``Cache-Control: policy``."""
    g.cache_control = policy


def cache_round(data: Mapping[str, Any], args: Mapping[str, str]) -> None:
    """Cache the answer when it shows a frozen round named by number (never "the latest round")."""
    if args.get("round") and data.get("round") and data["round"]["frozen"]:
        cache(FROZEN_ROUND)


def init_app(app: Flask) -> None:
    """Keep rendered pages and robustness curves; add caching headers and conditional answers (304) to
    successful GET responses."""
    app.extensions["arena_rendered"] = Kept[str]()
    app.extensions["arena_kept_curves"] = Kept[list](capacity=4096)
    app.extensions["arena_recent"] = Recent[Any](ttl=app.config.get("STANDINGS_REFRESH", 5.0))

    @app.after_request
    def conditional(response: Response) -> Response:
        if request.method not in ("GET", "HEAD") or response.status_code != 200 or response.is_streamed:
            return response
        response.vary.add("Cookie")
        if "token" in session:  # a signed-in viewer's page is theirs: no shared cache keeps it
            response.headers["Cache-Control"] = PRIVATE
        response.headers.setdefault("Cache-Control", g.get("cache_control", REVALIDATE))
        if response.get_etag() == (None, None):
            response.add_etag()
        return response.make_conditional(request)
