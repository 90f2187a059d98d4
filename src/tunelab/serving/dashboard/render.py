"""Server-rendered pages: jinja2 templates from this package, autoescaped, one base layout.

No build step and no CDN: the CSS and the little JavaScript the pages use are files of this package,
served under /static. Every page gets the session (for the CSRF token its forms carry) and the nav.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from tunelab.serving.dashboard.sessions import Session

NAV = (
    ("runs", "Runs"),
    ("jobs", "Jobs"),
    ("studies", "Studies"),
    ("playground", "Playground"),
    ("review", "Review"),
)

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("tunelab.serving.dashboard", "templates"),
    autoescape=jinja2.select_autoescape(["html"]),
    undefined=jinja2.StrictUndefined,  # a misspelt variable is an error in the tests, not a blank cell
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _when(value: Any) -> str:
    """A unix time or ISO string as local `YYYY-MM-DD HH:MM`."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    return str(value)[:16].replace("T", " ")


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


_ENV.filters.update(number=_number, when=_when, as_json=_as_json)


def page(request: Request, template: str, *, code: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = getattr(request.state, "session", None)
    html = _ENV.get_template(template).render(
        nav=NAV,
        here=context.pop("here", ""),
        session=session,
        csrf=session.csrf if session else "",
        **context,
    )
    return HTMLResponse(html, status_code=code)
