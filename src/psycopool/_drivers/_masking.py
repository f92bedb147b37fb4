"""Passwords out of connection errors and reprs: the one place that knows how to find them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# libpq's connection keywords: an unquoted password with a space (which libpq
# rejects) is masked up to the next of them, so no fragment of it shows.
_KEYWORDS = (
    "host|hostaddr|port|dbname|user|password|passfile|require_auth|channel_binding"
    "|connect_timeout|client_encoding|options|application_name|fallback_application_name"
    "|keepalives|keepalives_idle|keepalives_interval|keepalives_count|tcp_user_timeout"
    "|replication|gssencmode|sslmode|sslnegotiation|requiressl|sslcompression|sslcert"
    "|sslkey|sslcertmode|sslpassword|sslrootcert|sslcrl|sslcrldir|sslsni|requirepeer"
    "|ssl_min_protocol_version|ssl_max_protocol_version|min_protocol_version"
    "|max_protocol_version|krbsrvname|gsslib|gssdelegation|service|target_session_attrs"
    "|load_balance_hosts|dsn"
)
_SECRET_KEY = r"(?<![A-Za-z0-9_])(?:ssl)?password"
_PASSWORD_RE = re.compile(
    # conninfo: password=value, value quoted (maybe unterminated), or unquoted up
    # to the next keyword (libpq stops at a space, and then quotes the rest).
    rf"""({_SECRET_KEY}\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+(?:\s+(?!(?:{_KEYWORDS})\s*=)\S+)*)"""
    # a URL's user:password@
    r"""|(://[^:/@\s]*:)([^@\n]*)(@)"""
    # a repr of a mapping or pairs: 'password': 'x' or ('password', 'x')
    rf"""|((['"]){_SECRET_KEY}\7\s*[:,]\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,)}}\]\s]+)""",
    re.IGNORECASE,
)


def hide_password(text: str) -> str:
    """Mask passwords in a conninfo string, a URL, a repr, or an error message built from one."""

    def mask(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"{match.group(1)}***"
        if match.group(3) is not None:
            return f"{match.group(3)}***{match.group(5)}"
        return f"{match.group(6)}***"

    return _PASSWORD_RE.sub(mask, text)


_QUOTED_RE = re.compile(r'"([^"]*)"')
_URL_PASSWORD_RE = re.compile(r"://[^:/@\s]*:([^@]*)@")


def _secrets(conninfo: Any, kwargs: Mapping[str, Any]) -> list[str]:
    """The passwords in a conninfo string (as the user wrote them) and in keyword arguments."""
    found = [str(v) for k, v in kwargs.items() if k in ("password", "sslpassword") and v]
    if isinstance(conninfo, str):
        for match in _PASSWORD_RE.finditer(conninfo):
            value = match.group(2) or match.group(4) or ""
            found.append(value.strip("'"))
        found.extend(m.group(1) for m in _URL_PASSWORD_RE.finditer(conninfo))
    return [s for s in found if s]


def masked_error(exc: BaseException, conninfo: Any, kwargs: Mapping[str, Any]) -> BaseException:
    """``exc`` from a connect attempt, or a copy of it with no fragment of a password.

    libpq's "invalid dsn" errors quote the fragment they could not parse,
    which may be part of a password (``password=se cret``: "cret"). Such a
    fragment, and anything :func:`hide_password` finds, is masked. A copy
    keeps the exception's class; the original is not chained (it holds the
    fragment).
    """
    text = str(exc)
    secrets = _secrets(conninfo, kwargs)
    words = {w for s in secrets for w in s.split() if len(w) >= 2}

    def quoted(match: re.Match[str]) -> str:
        fragment = match.group(1)
        if fragment and (
            any(fragment in s or s in fragment for s in secrets)
            or any(w in fragment for w in words)
        ):
            return '"***"'
        return match.group(0)

    masked = hide_password(_QUOTED_RE.sub(quoted, text) if secrets else text)
    if masked == text:
        return exc
    try:
        copy = type(exc)(masked)
    except Exception:  # a class with another signature: keep it, change its message
        copy = exc
        copy.args = (masked,)
    return copy
