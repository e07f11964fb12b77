"""The operator's web dashboard, served by `bootforge serve` under /ui/.

Why server-rendered pages (Jinja2) with a little plain JavaScript (EventSource, fetch), and no front
end framework:

- nothing to build: the pages, one script and one stylesheet ship inside the Python package, so an
  operator's machine needs no Node.js tool chain and a change is an edit to a template;
- nothing fetched from elsewhere: provisioning networks are often air-gapped, so every asset is
  served by bootforge itself (no CDN), and the Content-Security-Policy allows only this origin;
- the server already holds the data and the rules (masking, states, diagnosis): pages are rendered
  from the same conductor reads and services the API uses, and the browser only swaps in fragments;
- live updates ride the server-sent-event streams bootforge already has (observe/streams.py): the
  fleet view refreshes the rows shown (one page query) when a provision, failure or maintenance
  event arrives, and every 15 s for what publishes no event (power sync); the node page appends
  timeline rows as the stream delivers them and tails the console log the same way.

Authentication is a login form checked against the API's htpasswd (the same Htpasswd, so bcrypt runs
off the event loop and failures are rate-limited per address), a signed session cookie and a CSRF
token on every POST (session.py). In noauth mode (loopback only) no login is asked for, but the CSRF
check stays: any web page the operator opens could otherwise POST to 127.0.0.1.

Like bootforge.api, this package runs no SQL: it reads through bootforge.conductor (reads.py,
fleet.py) and acts through the services the API's routes call (tests/unit/test_web.py checks it).
"""

from __future__ import annotations

from fastapi import FastAPI

from bootforge.api.auth import Htpasswd
from bootforge.keys import load_or_create
from bootforge.web.pages import router
from bootforge.web.session import Sessions

__all__ = ["PREFIX", "install"]

PREFIX = "/ui"


def install(app: FastAPI, htpasswd: Htpasswd | None) -> None:
    """Add the dashboard's routes to the API's app; its login state lives in app.state."""
    settings = app.state.services.settings
    app.state.web_sessions = Sessions(load_or_create(settings.secret_key_path).derive("web-session"))
    app.state.web_htpasswd = htpasswd
    app.include_router(router)
