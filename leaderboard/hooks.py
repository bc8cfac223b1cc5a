"""``POST /hooks/push``: the one route of the board that writes. GitHub, GitLab and Gitea announce a team's
push here; a verified push is recorded and its sync queued (:mod:`arena.classroom.pushes`), and the answer (202)
comes at once: the sync runs on a worker or in a process of its own, never in the board.

A delivery refused (oversized, without a service's headers, malformed, for an unknown repository, unsigned,
wrongly signed) is answered with its status and reason and logged without its body.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from arena.classroom import pushes, webhooks
from arena.classroom.webhooks import Refused
from arena.config import broker_url, hook_max_bytes
from leaderboard.lookup import database

bp = Blueprint("hooks", __name__, url_prefix="/hooks")
log = logging.getLogger("arena.hooks")


@bp.post("/push")
def push() -> tuple[Response, int]:
    """A push event of GitHub, GitLab or Gitea: 202 and a sync queued; 200 for a ping, an event or a branch the
    arena ignores, or a redelivery; 4xx when refused (429 over the team's daily limit of pushes)."""
    sent = None
    try:
        body = _body()
        sent = webhooks.delivery(request.headers, body)
        data = webhooks.payload(body, request.content_type or "")
        received = pushes.receive(database(), sent, body, data)
    except Refused as refused:
        _log_refusal(sent, refused.status, refused.reason)
        return jsonify(error=refused.reason, status=refused.status), refused.status
    if received.queue:
        _queue(received)
    if received.status >= 400:
        _log_refusal(sent, received.status, received.answer.get("error", ""))
    response = jsonify(received.answer)
    if received.retry_after is not None:
        response.headers["Retry-After"] = str(received.retry_after)
    return response, received.status


def _body() -> bytes:
    """The raw body (its bytes are what is signed): it must say its length, within the size limit."""
    limit, length = current_app.config["HOOK_MAX_BYTES"], request.content_length
    if length is None:
        raise Refused(411, "the delivery has no Content-Length (GitHub, GitLab and Gitea always send one)")
    if length > limit:
        raise Refused(413, f"the delivery holds {length} bytes; the arena reads {limit} at most")
    return request.get_data(cache=True)


def _queue(received: pushes.Received) -> None:
    """Hand the pushes to a worker (with a broker) or to a process of their own; if that fails, say so (503)."""
    config = current_app.config
    env = os.environ | {"ARENA_HOME": config["ARENA_HOME"], "ARENA_DATABASE_URL": config["DATABASE_URL"]}
    try:
        pushes.dispatch(received.queue, config.get("BROKER_URL"), env, Path(config["ARENA_HOME"]))
    except Exception as exc:  # the broker is away, no process can start: the push must not be lost silently
        log.exception("could not queue the syncs of pushes %s", received.queue)
        reason = f"the sync could not be queued ({type(exc).__name__}); redeliver the push, or run `arena sync`"
        pushes.unsent(database(), received.queue, reason)
        received.status, received.answer = 503, received.answer | {"error": reason}


def _log_refusal(sent: webhooks.Delivery | None, status: int, reason: str) -> None:
    """One line per refused delivery: who sent what, and why (never its body, never its signature)."""
    log.warning(
        "refused a webhook delivery: %s %s %s from %s: %d %s",
        sent.service if sent else "unknown service",
        sent.event if sent else "-",
        sent.delivery if sent else "-",
        request.remote_addr,
        status,
        reason,
    )


def init_app(app: Flask) -> None:
    """The webhook route and its size limit."""
    app.config.setdefault("HOOK_MAX_BYTES", hook_max_bytes())
    app.config.setdefault("BROKER_URL", broker_url())
    app.register_blueprint(bp)
