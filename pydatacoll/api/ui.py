"""The status page: ``/ui/`` serves the files of `pydatacoll.ui` (package data).

The files hold no data (the page reads the REST API with the token the user gives it),
so they are served without the token, even when reads are protected. Only the listed
files are served, read once at import; a strict Content-Security-Policy keeps the page
to its own scripts and to this origin.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from pydatacoll import errors
from pydatacoll.api.core import ApiCore
from pydatacoll.api.plumbing import routes

_STATIC = files("pydatacoll.ui").joinpath("static")
#: name -> (Content-Type, content).
FILES: dict[str, tuple[bytes, bytes]] = {
    name: (content_type, _STATIC.joinpath(name).read_bytes())
    for name, content_type in (
        ("index.html", b"text/html; charset=utf-8"),
        ("app.js", b"text/javascript; charset=utf-8"),
        ("app.css", b"text/css; charset=utf-8"),
    )
}
_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@routes.route("/ui", methods=["GET"])
def ui_redirect(self: ApiCore, request: Any) -> bytes:
    """Moved to ``/ui/`` (relative links of the page need the slash)."""
    request.setResponseCode(301)
    request.setHeader(b"Location", b"/ui/")
    return b""


@routes.route("/ui/", methods=["GET"])
def ui_index(self: ApiCore, request: Any) -> bytes:
    """The status page."""
    return _serve(request, "index.html")


@routes.route("/ui/<name>", methods=["GET"])
def ui_file(self: ApiCore, request: Any, name: str) -> bytes:
    """A file of the status page (its script and style sheet)."""
    return _serve(request, name)


def _serve(request: Any, name: str) -> bytes:
    found = FILES.get(name)
    if found is None:
        raise errors.NotFound("no such file of the status page", field="name")
    content_type, content = found
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Content-Security-Policy", _POLICY)
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    return content
