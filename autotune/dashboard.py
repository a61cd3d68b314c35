"""optuna-dashboard over the study database, read-only, so a live tuner never notices it."""

from __future__ import annotations

import json
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .reading import read_only_storage

READ_METHODS = ("GET", "HEAD", "OPTIONS")


def read_only(app: Callable) -> Callable:
    """Refuse the dashboard's edits (rename, delete, notes, tell) with a reason its UI shows."""
    def wrapped(environ, start_response):
        if environ["REQUEST_METHOD"] in READ_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": "this dashboard is read-only: it never writes to a study "
                                     "database a tuner may be using"}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body)))])
        return [body]
    return wrapped


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # the browser fetches several API routes at once


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - one line per request drowns the address
        pass


def make_dashboard(storage_url: str | None, host: str = "127.0.0.1", port: int = 8080) -> WSGIServer:
    """A bound, not yet serving, dashboard server; ``port=0`` picks a free port."""
    from optuna_dashboard import wsgi

    app = read_only(wsgi(read_only_storage(storage_url)))
    return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)


def serve(storage_url: str | None, host: str = "127.0.0.1", port: int = 8080,
          announce: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C."""
    server = make_dashboard(storage_url, host, port)
    announce(f"optuna-dashboard on http://{host}:{server.server_port}/dashboard "
             "(read-only; Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        server.server_close()
