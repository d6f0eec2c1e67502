"""Helpers of the server tests: a uvicorn server on 127.0.0.1 (a free port) over a loaded model,
the official ``openai`` client pointed at it, and raw HTTP for what a client library would not send."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from steerling_lite.serve import BackgroundServer, ServeSettings, ServerState, create_app

MODEL = "tiny-test"


@contextmanager
def serving(lm, **settings: Any) -> Iterator[tuple[BackgroundServer, ServerState]]:
    """``lm`` served on 127.0.0.1 with :class:`ServeSettings` ``settings`` (model name ``tiny-test``)."""
    settings.setdefault("model_name", MODEL)
    app = create_app(lm, ServeSettings(**settings))
    with BackgroundServer(app) as server:
        yield server, app.state.steerling


def client(server: BackgroundServer, api_key: str = "unused"):
    """The official OpenAI client on this server (no retries: every answer is the server's first)."""
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=300)


def connect(server: BackgroundServer) -> http.client.HTTPConnection:
    u = urlparse(server.url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=300)


def request(server: BackgroundServer, method: str, path: str, body: bytes | dict | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One raw HTTP request; returns ``(status, parsed JSON body)``."""
    conn = connect(server)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn.request(method, path, body=data, headers=headers or {"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def sse_events(resp: http.client.HTTPResponse) -> Iterator[Any]:
    """The ``data:`` payloads of a server-sent-event stream (``[DONE]`` as the string)."""
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data: "):
            payload = line[len("data: "):]
            yield payload if payload == "[DONE]" else json.loads(payload)
