"""Broker URLs as they may be shown: with any password masked."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# libpq also takes the password as a URI parameter: ...?password=secret
_QUERY_PASSWORD = re.compile(r"(?:^|(?<=&))password=[^&]*")


def redact(url: str, mask: str = "**") -> str:
    """``url`` with its password masked, in the user part and in the parameters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable broker URL>"
    query = _QUERY_PASSWORD.sub(lambda _: f"password={mask}", parts.query)
    if parts.password is None and query == parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}:{mask}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))
