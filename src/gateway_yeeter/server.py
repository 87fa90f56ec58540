"""The HTTPS server: routes, the admission endpoint, and a shutdown that drops no request.

uvicorn (with httptools and uvloop) does the HTTP work. What it does not do the way a webhook
needs is added here, in a protocol subclass and a server subclass:

- deadlines for request headers and bodies, so a client that trickles bytes cannot hold a
  connection, and a cap on header size;
- one write per response instead of one for the head and one for the body;
- a drain on SIGTERM that keeps serving for a delay while telling every client to reconnect
  elsewhere (``Connection: close``), then closes the listener but still answers requests on
  connections that were accepted and have not sent their request yet. uvicorn's own shutdown
  closes those at once, and kube-apiserver does not retry a webhook call that was dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway_yeeter.admission import Decision, Outcome, PodReference, Policy, decide
from gateway_yeeter.config import Limits, ServeSettings, parse_duration
from gateway_yeeter.metrics import Metrics
from gateway_yeeter.networks import encode_json
from gateway_yeeter.review import BadReview, build_response, decode_review, encode_review
from gateway_yeeter.tls import CertificateStore, CertificateWatcher, ServingCertificate

logger = logging.getLogger(__name__)
decisions = logging.getLogger("gateway_yeeter.decisions")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MUTATE_PATH = "/mutate"
HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
METRICS_PATH = "/metrics"

_JSON_TYPE = b"application/json"
_TEXT = (b"content-type", b"text/plain; charset=utf-8")
_CLOSE = (b"connection", b"close")


@dataclass(slots=True)
class ServingState:
    """What the probes report: listening with a certificate, and whether a drain has begun."""

    listening: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.listening and not self.draining


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.close = close


def log_decision(decision: Decision, *, uid: str, dry_run: bool) -> None:
    """One line per decision; a removed route is reported with the word runbooks grep for."""
    pod: PodReference = decision.pod
    facts = {
        "uid": uid,
        "namespace": pod.namespace,
        "pod": pod.name,
        "generate_name": pod.generate_name,
        "pod_kind": str(decision.pod_kind or ""),
        "outcome": str(decision.outcome),
        "dry_run": dry_run,
    }
    if decision.outcome is Outcome.MUTATED:
        removed = ", ".join(
            f"{route.network} {encode_json(route.gateways)}" for route in decision.removed
        )
        facts["removed"] = removed
        decisions.info(
            "YEETING default-route from pod %s (%s): %s uid=%s dry_run=%s",
            pod, decision.pod_kind, removed, uid, dry_run, extra=facts,
        )
    elif decision.outcome is Outcome.UNPARSABLE:
        decisions.warning(
            "pod %s (%s) left unchanged: %s uid=%s",
            pod, decision.pod_kind, decision.reason, uid, extra=facts,
        )
    else:
        decisions.info(
            "pod %s %s: %s uid=%s", pod, decision.outcome, decision.reason, uid, extra=facts
        )


class WebhookApp:
    """The ASGI application: ``/mutate``, the probes, and ``/metrics``."""

    def __init__(
        self, *, policy: Policy, metrics: Metrics, state: ServingState, limits: Limits
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self.state = state
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return

        path, method = scope["path"], scope["method"]
        if path == MUTATE_PATH:
            if method != "POST":
                self.metrics.count_bad_request(405)
                await self._respond(send, 405, b"use POST\n", extra=((b"allow", b"POST"),))
                return
            await self._mutate(scope, receive, send)
            return

        if path in (HEALTHZ_PATH, READYZ_PATH, METRICS_PATH) and method not in ("GET", "HEAD"):
            await self._respond(send, 405, b"use GET\n", extra=((b"allow", b"GET, HEAD"),))
        elif path == HEALTHZ_PATH:
            await self._respond(send, 200, b"ok\n")
        elif path == READYZ_PATH:
            if self.state.ready:
                await self._respond(send, 200, b"ok\n")
            else:
                reason = b"draining\n" if self.state.draining else b"not listening yet\n"
                await self._respond(send, 503, reason)
        elif path == METRICS_PATH:
            body = generate_latest(self.metrics.registry)
            await self._respond(send, 200, body, content_type=CONTENT_TYPE_LATEST.encode())
        else:
            await self._respond(send, 404, b"not found\n")

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        *,
        content_type: bytes | None = None,
        extra: tuple[tuple[bytes, bytes], ...] = (),
        close: bool = False,
    ) -> None:
        headers = [
            (b"content-type", content_type) if content_type else _TEXT,
            (b"content-length", str(len(body)).encode()),
            *extra,
        ]
        # While draining, every answer asks the client to reconnect: the API server keeps
        # its connections to a terminating pod and would otherwise never move off it.
        if close or self.state.draining:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.metrics.in_flight.inc()
        try:
            try:
                body = await self._read_body(scope, receive)
                started = time.perf_counter()
                answer = self._answer(body)
            except _HttpError as error:
                logger.warning("bad request to %s: %s", MUTATE_PATH, error)
                self.metrics.count_bad_request(error.status)
                await self._respond(
                    send, error.status, f"{error}\n".encode(), close=error.close
                )
                return
            await self._respond(send, 200, answer, content_type=_JSON_TYPE)
            self.metrics.duration.observe(time.perf_counter() - started)
        finally:
            self.metrics.in_flight.dec()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        # No deadline here: WebhookProtocol closes a connection whose body is late, and the
        # read below then ends with a disconnect.
        limit = self.limits.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise _HttpError(413, f"body of {int(value)} bytes is over {limit}", close=True)

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _HttpError(400, "client went away before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _HttpError(413, f"body is over {limit} bytes", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _answer(self, body: bytes) -> bytes:
        try:
            review = decode_review(body)
        except BadReview as error:
            raise _HttpError(400, str(error)) from None

        request = review.request
        uid = request["uid"]
        try:
            decision = decide(request, self.policy)
        except Exception:
            # A fault in the rule must not stop a migration: allow the pod as it is.
            logger.exception("admission rule failed for uid=%s; allowing unchanged", uid)
            self.metrics.count_decision(Outcome.IGNORED, None, 0)
            return encode_review(review.api_version, build_response(uid))

        log_decision(decision, uid=uid, dry_run=bool(request.get("dryRun")))
        self.metrics.count_decision(decision.outcome, decision.pod_kind, len(decision.removed))
        return encode_review(review.api_version, decision.response(uid))


@functools.lru_cache(maxsize=64)
def request_deadline(query_string: bytes, request_timeout: float) -> float:
    """The time a request's body may take: the API server's ``?timeout=``, if shorter.

    kube-apiserver sends the same query on every call, so the parse is cached.
    """
    values = parse_qs(query_string.decode("latin-1")).get("timeout")
    if values:
        with contextlib.suppress(ValueError):
            return min(request_timeout, parse_duration(values[0]))
    return request_timeout


class CoalescingTransport:
    """Sends everything written in one turn of the event loop as one write.

    uvicorn writes a response's head and body separately; over TLS each write is a record and
    a system call of its own, which costs more than the rest of a small admission.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WebhookProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request deadlines, a header size cap, and a drain."""

    header_timeout: ClassVar[float] = Limits().header_timeout
    request_timeout: ClassVar[float] = Limits().request_timeout
    max_header_bytes: ClassVar[int] = Limits().max_header_bytes

    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes: int = 0
    _header_tail: bytes = b""
    _awaiting_headers: bool = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(cast(asyncio.Transport, coalescing))
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Counted before the parser sees the bytes, or a whole oversized header block read at
        # once would be dispatched first; only the bytes up to the blank line that ends the
        # headers count, so a body read together with its headers does not.
        if self._awaiting_headers:
            window = self._header_tail + data
            end = window.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4 - len(self._header_tail)
            if self._header_bytes > self.max_header_bytes:
                self._refuse_headers()
                return
            self._header_tail = window[-3:]
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        self._header_tail = b""
        self._cancel_header_timer()
        super().on_headers_complete()

        # The body gets its own deadline, also when the answer went out before it was read.
        deadline = request_deadline(self.scope["query_string"], self.request_timeout)
        self._header_timer = self.loop.call_later(deadline, self._request_overdue)

    def on_message_complete(self) -> None:
        self._cancel_header_timer()
        super().on_message_complete()
        # Whatever the client sends next on this connection starts a new request's headers.
        self._awaiting_headers = True

    def shutdown(self) -> None:
        """Begin closing for a server shutdown, without dropping a request on its way.

        A request being answered finishes and its connection closes. An idle connection may
        have a request in transit that the API server already counts as sent, so it gets until
        the header deadline to arrive; the answer then closes the connection.
        """
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self._unset_keepalive_if_required()
        if self._header_timer is None:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.debug("closing connection from %s: no complete request headers", self.client)
            self.transport.close()

    def _request_overdue(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.warning("closing connection from %s: request body not received in time",
                           self.client)
            self.transport.close()

    def _refuse_headers(self) -> None:
        logger.warning("closing connection from %s: request headers too large", self.client)
        self._cancel_header_timer()
        reason = f"request headers over {self.max_header_bytes} bytes\n".encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(reason), reason)
        )
        self.transport.close()


def protocol_for(limits: Limits) -> type[WebhookProtocol]:
    """A protocol class carrying these limits, for uvicorn to instantiate per connection."""
    return type(
        "ConfiguredWebhookProtocol",
        (WebhookProtocol,),
        {
            "header_timeout": limits.header_timeout,
            "request_timeout": limits.request_timeout,
            "max_header_bytes": limits.max_header_bytes,
        },
    )


class WebhookServer(uvicorn.Server):
    """uvicorn's server with this webhook's signal handling, readiness and drain."""

    def __init__(
        self, config: uvicorn.Config, *, state: ServingState, settings: ServeSettings
    ) -> None:
        super().__init__(config)
        self.state = state
        self.settings = settings

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's handlers re-raise the signal after shutdown, which ends the process with
        # 128+15 instead of 0; a drained webhook exits 0.
        loop = asyncio.get_running_loop()
        handled = (signal.SIGTERM, signal.SIGINT)
        for signal_number in handled:
            loop.add_signal_handler(signal_number, self.begin_drain, signal_number)
        try:
            yield
        finally:
            for signal_number in handled:
                loop.remove_signal_handler(signal_number)

    def begin_drain(self, signal_number: int = signal.SIGTERM) -> None:
        """Turn unready at once, keep answering for the shutdown delay, then stop accepting."""
        if self.state.draining:
            logger.warning("second %s: exiting without waiting for requests",
                           signal.Signals(signal_number).name)
            self.force_exit = True
            self.should_exit = True
            return

        self.state.draining = True
        delay = self.settings.shutdown_delay
        logger.info(
            "%s received: draining; /readyz reports 503, the listener closes in %.1fs",
            signal.Signals(signal_number).name, delay,
        )
        asyncio.get_running_loop().call_later(delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        logger.info("closing the listener; answering requests already on their way")
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.state.listening = True
            # Report the bound port, which differs from the flag when that was 0.
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            logger.info("listening on https://%s:%d", f"[{host}]" if ":" in host else host, port)


def build_server(
    settings: ServeSettings, certificate: ServingCertificate, metrics: Metrics
) -> tuple[WebhookServer, CertificateWatcher | None]:
    """Assemble the app, the TLS store and the uvicorn server; nothing is bound yet."""
    state = ServingState()
    app = WebhookApp(policy=settings.policy, metrics=metrics, state=state, limits=settings.limits)
    store = CertificateStore(certificate)
    metrics.certificate_in_service(certificate.not_after)

    limits = settings.limits
    config = uvicorn.Config(
        app,
        host=settings.bind_address,
        port=settings.secure_port,
        loop="uvloop",
        http=protocol_for(limits),
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        # Nothing stands between the API server and the webhook that would set these headers.
        proxy_headers=False,
        # uvicorn annotates these as int but uses them as seconds in float arithmetic;
        # rounding would turn a sub-second setting into zero.
        timeout_keep_alive=cast(int, limits.idle_timeout),
        timeout_graceful_shutdown=cast(int, settings.shutdown_timeout),
        # uvicorn refuses a request once the open connections, the asking one included,
        # reach the limit; one more lets exactly max_connections connections be served.
        limit_concurrency=limits.max_connections + 1,
        ssl_context_factory=lambda _config, _default: store.context,
    )

    watcher = None
    if not settings.self_signed:
        def on_reload(loaded: ServingCertificate | None, _: str | None) -> None:
            metrics.certificate_reloaded(success=loaded is not None)
            if loaded is not None:
                metrics.certificate_in_service(loaded.not_after)

        watcher = CertificateWatcher(
            store,
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_private_key_file,
            interval=settings.cert_reload_interval,
            on_reload=on_reload,
        )
    return WebhookServer(config, state=state, settings=settings), watcher


def bind(settings: ServeSettings) -> socket.socket:
    """The listening socket, bound before anything starts so a taken port is a clear error.

    ``::`` listens on IPv6 and, where the host allows, on IPv4 as well.
    """
    address = settings.bind_address
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    every_family = address == "::" and socket.has_dualstack_ipv6()
    return socket.create_server(
        (address, settings.secure_port), family=family, backlog=2048, dualstack_ipv6=every_family
    )


async def serve(
    settings: ServeSettings,
    certificate: ServingCertificate,
    metrics: Metrics,
    listener: socket.socket,
) -> None:
    """Serve on ``listener`` until a signal has drained the server."""
    server, watcher = build_server(settings, certificate, metrics)
    watch = asyncio.create_task(watcher.run()) if watcher is not None else None
    try:
        await server.serve(sockets=[listener])
    finally:
        if watch is not None:
            watch.cancel()
    logger.info("stopped")
