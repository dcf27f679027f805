"""Connections to ``hylex serve``: time limits on receiving a request, and a cap on open connections.

uvicorn bounds the idle time between two requests of a connection (``timeout_keep_alive``), but nothing else
(its issue 157): a connection that sends part of its request headers, or part of its body, and then stalls stays
open for ever, and ASGI middleware cannot help, since the app is called only once the headers are in (issue 40:
1,000 such connections were all still open after 120 s). :class:`GuardedH11Protocol` is uvicorn's h11 protocol
with three guards:

* ``header_timeout``: the request line and headers must be complete within this many seconds of the
  connection's opening (or of a kept-alive connection's first byte of its next request);
* ``body_timeout``: the body must be complete within this many seconds of the headers;

  past either, the server answers 408 with ``{"error"}`` (if it has not begun an answer) and closes the
  connection. Slow *trickling* counts too: the limits are deadlines, not idle times;
* ``max_connections``: a connection opened while this many are open gets 503 with ``{"error"}`` and
  Retry-After to its request (itself bounded by ``header_timeout``), then is closed. uvicorn's own
  ``limit_concurrency`` answers in plain text and keeps idle stalled sockets open; this answers in JSON, and the
  deadlines above close the stalled ones.

Malformed requests (a header over h11's 16 KB, say) get their 400 as ``{"error"}`` as well, not plain text. The
limits are per serving process (each of ``--workers`` has its own). ``hylex serve`` runs with them; an app of
:func:`hylex.service.create_app` served by another uvicorn gets them with ``uvicorn.Config(app,
http=guarded_protocol(...))`` (or :func:`server_config`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from hylex.errors import HylexError

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1000
_REASONS = {400: b"Bad Request", 408: b"Request Timeout"}
_LOG_EVERY = 10.0  # seconds between two warnings of refused connections (an attack would flood the log)


def _json_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request deadlines and a connection cap (see the module docstring); the
    limits are class attributes, set by :func:`guarded_protocol`."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    _last_refusal_log = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_for: str | None = None  # "headers" or "body": what the armed deadline waits for

    # -- uvicorn's hooks ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.app = self._over_capacity  # this connection's request is answered 503, then it is closed
            now = time.monotonic()
            if now - GuardedH11Protocol._last_refusal_log >= _LOG_EVERY:
                GuardedH11Protocol._last_refusal_log = now
                logger.warning("%d connections open, over --max-connections %d: refusing new ones with 503",
                               len(self.connections), self.max_connections)
        self._guard()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._guard()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._guard()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, as ``{"error"}`` instead of plain text."""
        self._respond(400, "invalid HTTP request: malformed, or its request line and headers over 16 KB")

    # -- the deadlines -----------------------------------------------------------------------------------------
    def _guard(self) -> None:
        """Arm or disarm the deadline for the state the client's side of the connection is in."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            # between requests uvicorn's keep-alive timer runs until the next request's first byte; before the
            # first request, and once that first byte came, the header deadline runs
            if self.timeout_keep_alive_task is not None:
                self._disarm()
            elif self._waiting_for != "headers":
                self._arm("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            if self._waiting_for != "body":
                self._arm("body", self.body_timeout)
        else:  # the request is in (DONE), or the connection is closing or switching: nothing more to wait for
            self._disarm()

    def _arm(self, what: str, seconds: float) -> None:
        self._disarm()
        self._waiting_for = what
        self._deadline = self.loop.call_later(seconds, self._expired, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._waiting_for = None

    def _expired(self, what: str, seconds: float) -> None:
        self._deadline = None
        self._waiting_for = None
        if self.transport is None or self.transport.is_closing():
            return
        option = "--header-timeout" if what == "headers" else "--body-timeout"
        logger.info("closing a connection from %s: request %s not received within %g s", self.client, what,
                    seconds)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # the app waits for the rest of the body: it sees a disconnect, and whatever it sends is dropped
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        self._respond(408, f"request {what} not received within {seconds:g} s ({option}): send the whole request "
                           f"without pausing")

    def _respond(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` with ``status`` and close the connection."""
        body = _json_body(message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))
            out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
            self.transport.write(out)
        except h11.LocalProtocolError:  # an answer had begun: only closing is left
            pass
        self.transport.close()

    async def _over_capacity(self, scope, receive, send) -> None:
        body = _json_body(f"the server has {self.max_connections} connections open (--max-connections): retry "
                          f"shortly")
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"retry-after", b"1"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def check_limits(header_timeout: float, body_timeout: float, max_connections: int) -> None:
    for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise HylexError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
        raise HylexError(f"max_connections must be a positive integer, got {max_connections!r}")


def guarded_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT, body_timeout: float = DEFAULT_BODY_TIMEOUT,
                     max_connections: int = DEFAULT_MAX_CONNECTIONS) -> type[GuardedH11Protocol]:
    """:class:`GuardedH11Protocol` with these limits (uvicorn's ``Config(http=...)`` takes a class)."""
    check_limits(header_timeout, body_timeout, max_connections)
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
        "max_connections": int(max_connections)})


def server_config(app, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                  body_timeout: float = DEFAULT_BODY_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                  **kwargs: Any):
    """uvicorn's Config for ``app`` with the guarded protocol (``kwargs``: other uvicorn settings). WebSockets
    are off: the service has no WebSocket route, and an upgraded connection would leave the guards behind."""
    import uvicorn

    return uvicorn.Config(app, http=guarded_protocol(header_timeout, body_timeout, max_connections), ws="none",
                          **kwargs)


__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_HEADER_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "GuardedH11Protocol",
           "guarded_protocol", "server_config"]
