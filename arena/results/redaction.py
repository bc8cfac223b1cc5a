"""Credentials never shown: a repository URL keeps its host and path, never its password or token.

Teams register repositories as ``https://student:TOKEN@host/repo.git`` or ``https://TOKEN@host/...``; the
arena stores the URL as given (git needs it), and everything it shows (board, JSON, CLI, errors, plugin
origins) goes through :func:`redact`.
"""

from __future__ import annotations

import re

#: the user information of a URL with a scheme: ``scheme://USERINFO@``
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*)(?::(?P<secret>[^/@\s]*))?@")
#: schemes whose user name is no secret (``ssh://git@host``)
_PLAIN_USERS = ("ssh://", "git+ssh://")


def redact(text: str | None) -> str | None:
    """``text`` with the credentials of every URL in it replaced by ``***`` (a password, or a lone token)."""
    if text is None:
        return None

    def hide(match: re.Match[str]) -> str:
        scheme, user = match["scheme"], match["user"]
        if match["secret"] is not None:
            return f"{scheme}{user}:***@"
        return f"{scheme}{user}@" if scheme.lower() in _PLAIN_USERS else f"{scheme}***@"

    return _USERINFO.sub(hide, text)
