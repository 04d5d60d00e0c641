"""The one place that hides credentials in source URLs before they are shown or written anywhere
(log lines, error messages, summary.json, tracks.jsonl, index.html).

`mask_secrets(text)` finds every `scheme://...` URL in `text` (a bare URL or a message quoting one)
and replaces, keeping everything else as written:

  * the password of `user:password@` (also `:password@` with no user name) by `***`;
  * a user part without a password (`https://TOKEN@host`) by `***`: services pass tokens that way;
  * the value of every credential-like parameter in the query string, the fragment, and `name=value`
    path segments (some cameras take `/user=admin&password=...` in the path) by `***`.

Names are matched case-insensitively after dropping `-`, `_` and `.`: `token`, `password`,
`secret`, `signature`, `apikey`, `credential`, `auth` anywhere in the name (`access_token`,
`X-Amz-Signature`, `oauth`), and `pass`, `pwd`, `pw`, `key`, `sig` as the whole name.

    >>> mask_secrets("rtsp://admin:hunter2@10.0.0.7:554/live?token=abc&channel=1")
    'rtsp://admin:***@10.0.0.7:554/live?token=***&channel=1'
    >>> mask_secrets("clip.mp4")
    'clip.mp4'
"""
from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
_CONTAINS = ("token", "password", "passwd", "secret", "signature", "apikey", "credential", "auth")
_WHOLE = {"pass", "pwd", "pw", "key", "sig"}

# scheme://[userinfo@]host... ; the user part may hold spaces or a raw '@' (the last '@' before the
# path ends it, as FFmpeg reads it), the rest of the URL ends at white space.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<userinfo>[^/?#\n]*)@)?(?P<rest>[^\s]*)")
_PATH_PARAM = re.compile(r"(?P<lead>(?:^|[/&;])(?P<name>[^/&;=?#]+)=)(?P<value>[^/&;?#]*)")
_QUERY_PARAM = re.compile(r"(?P<lead>(?:^|[&;])(?P<name>[^&;=]+)=)(?P<value>[^&;]*)")


def is_secret_name(name: str) -> bool:
    """Whether a URL parameter called `name` carries a credential."""
    key = re.sub(r"[-_.\s]", "", unquote(name)).lower()
    return key in _WHOLE or any(word in key for word in _CONTAINS)


def mask_secrets(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (see the module doc)."""
    return _URL.sub(_mask_url, text) if "://" in text else text


def _mask_url(match: re.Match) -> str:
    userinfo, rest = match["userinfo"], match["rest"]
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{MASK}@" if colon else f"{MASK}@"
    path, q, query = rest.partition("?")
    path, h, fragment = path.partition("#") if not q else (path, "", "")
    if q:
        query, h, fragment = query.partition("#")
    path = _PATH_PARAM.sub(_mask_param, path)
    query, fragment = (_QUERY_PARAM.sub(_mask_param, part) for part in (query, fragment))
    return f"{match['scheme']}{userinfo or ''}{path}{q}{query}{h}{fragment}"


def _mask_param(match: re.Match) -> str:
    return match["lead"] + (MASK if is_secret_name(match["name"]) and match["value"] else match["value"])
