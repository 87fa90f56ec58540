"""Limits that keep one slow or oversized client from holding the webhook.

A header deadline for clients that trickle bytes, a cap on header size, a cap on body size
whether the body declares its length or is chunked, and the connection and idle limits.
"""

from __future__ import annotations

import signal
import socket
import ssl
import time

import orjson
import pytest

from gateway_yeeter.config import MAX_BODY_BYTES
from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.hardening.load import ReviewSender, SenderGroup, check_mutation
from tests.hardening.wire import (
    LOOPBACK,
    ConnectionClosed,
    is_closed_by_server,
    open_tls,
    read_response,
    request_bytes,
)
from tests.pods import review, virt_v2v_pod
from tests.webhook import WebhookProcess

HEADER_TIMEOUT = 1.0
TRICKLE_INTERVAL = 0.1
HEADER_CAP = 64 * 1024


def trickle_until_closed(connection: ssl.SSLSocket, request: bytes) -> float:
    """Send a request one byte per interval; how long the server let it go on."""
    started = time.monotonic()
    # Bounded: the whole request at this pace takes far longer than any deadline tested here.
    for byte in request[:60]:
        if is_closed_by_server(connection):
            return time.monotonic() - started
        try:
            connection.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        time.sleep(TRICKLE_INTERVAL)
    raise AssertionError("the server let a trickling client go on for the whole request")


def mutate_request(sent: dict[str, object]) -> bytes:
    return request_bytes("POST", "/mutate", orjson.dumps(sent),
                         headers={"content-type": "application/json"})


@pytest.fixture
def strict_webhook(start_webhook: StartWebhook) -> WebhookProcess:
    return start_webhook("--header-timeout", f"{HEADER_TIMEOUT}s")


def test_a_client_trickling_headers_is_cut_off_at_the_deadline_while_others_are_served(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    senders = [ReviewSender(strict_webhook.url, authority.ca_file)]
    with SenderGroup(senders) as load:
        slow = open_tls(strict_webhook.port, authority.ca_file)
        allowed = trickle_until_closed(slow, mutate_request(review(virt_v2v_pod())))
        slow.close()

    assert HEADER_TIMEOUT - TRICKLE_INTERVAL <= allowed <= HEADER_TIMEOUT + 0.8
    assert load.failures() == []
    latencies = [exchange.answered_at - exchange.sent_at for exchange in load.exchanges
                 if exchange.answered_at is not None]
    assert len(latencies) >= 20
    assert max(latencies) < 0.5, "the trickling client held up the others"


def test_a_trickle_of_the_next_request_on_a_kept_alive_connection_is_cut_off_too(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    connection = open_tls(strict_webhook.port, authority.ca_file)
    sent = review(virt_v2v_pod())
    connection.sendall(mutate_request(sent))
    answer = read_response(connection)
    assert answer.status == 200
    assert check_mutation(answer.body, sent) is None

    allowed = trickle_until_closed(connection, mutate_request(review(virt_v2v_pod())))
    connection.close()
    assert HEADER_TIMEOUT - TRICKLE_INTERVAL <= allowed <= HEADER_TIMEOUT + 0.8


def test_request_headers_over_64_kib_are_refused_with_431_and_the_connection_closed(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    # The head is sent without its blank line, so the server has read every byte by the time
    # it refuses, and its close cannot turn into a reset that would hide the answer.
    head = b"GET /healthz HTTP/1.1\r\nhost: gateway-yeeter\r\n"
    padding = b"x-padding: " + b"a" * 1000 + b"\r\n"
    oversized = head + padding * (HEADER_CAP // len(padding) + 1)
    assert len(oversized) > HEADER_CAP

    connection = open_tls(strict_webhook.port, authority.ca_file)
    started = time.monotonic()
    connection.sendall(oversized)
    answer = read_response(connection)
    assert answer.status == 431
    assert answer.closes
    assert connection.recv(1) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT / 2, "cut by the deadline, not the cap"
    connection.close()


def test_a_body_declared_over_the_limit_is_refused_with_413_before_it_is_sent(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    connection = open_tls(strict_webhook.port, authority.ca_file)
    connection.sendall(request_bytes(
        "POST", "/mutate",
        headers={"content-type": "application/json",
                 "content-length": str(MAX_BODY_BYTES + 1)},
    ))
    answer = read_response(connection)
    assert answer.status == 413
    assert answer.closes
    connection.close()


def chunked(body: bytes, size: int) -> bytes:
    pieces = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


def test_a_chunked_body_over_the_limit_is_refused_with_413(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    connection = open_tls(strict_webhook.port, authority.ca_file)
    head = request_bytes("POST", "/mutate", headers={"content-type": "application/json",
                                                     "transfer-encoding": "chunked"})
    # One byte over the limit and no final chunk: the limit, not the end, must stop it.
    connection.sendall(head + chunked(b"[" * (MAX_BODY_BYTES + 1), 256 * 1024))
    answer = read_response(connection)
    assert answer.status == 413
    assert answer.closes
    connection.close()


def sent_while_paused(webhook: WebhookProcess, connection: ssl.SSLSocket, data: bytes) -> None:
    """Send while the server is stopped, so that it finds every byte waiting in one read.

    That is what happens whenever the server is busier than its client is fast; pausing the
    process makes it happen every time.
    """
    webhook.signal(signal.SIGSTOP)
    try:
        connection.sendall(data)
    finally:
        webhook.signal(signal.SIGCONT)


def padded_review(total: int) -> tuple[dict[str, object], bytes]:
    """A review whose JSON body is exactly ``total`` bytes long, padded in an annotation."""
    sent = review(virt_v2v_pod())
    request = sent["request"]
    assert isinstance(request, dict)
    annotations = request["object"]["metadata"]["annotations"]
    annotations["example.com/padding"] = ""
    annotations["example.com/padding"] = "p" * (total - len(orjson.dumps(sent)))
    body = orjson.dumps(sent)
    assert len(body) == total
    return sent, body


def test_a_body_of_exactly_the_limit_is_answered_whether_sized_or_chunked(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    sent, body = padded_review(MAX_BODY_BYTES)
    connection = open_tls(strict_webhook.port, authority.ca_file)

    connection.sendall(request_bytes("POST", "/mutate", body))
    answer = read_response(connection)
    assert answer.status == 200
    assert check_mutation(answer.body, sent) is None

    head = request_bytes("POST", "/mutate", headers={"transfer-encoding": "chunked"})
    connection.sendall(head + chunked(body, 256 * 1024) + b"0\r\n\r\n")
    answer = read_response(connection)
    assert answer.status == 200
    assert check_mutation(answer.body, sent) is None
    connection.close()


def test_a_large_first_request_read_with_its_headers_is_not_taken_for_oversized_headers(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    sent, body = padded_review(200 * 1024)
    connection = open_tls(strict_webhook.port, authority.ca_file)
    sent_while_paused(strict_webhook, connection, request_bytes("POST", "/mutate", body))

    try:
        answer = read_response(connection)
    finally:
        connection.close()
    assert answer.status == 200
    assert check_mutation(answer.body, sent) is None


def test_request_headers_over_64_kib_are_refused_even_when_read_all_at_once(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nhost: gateway-yeeter\r\n"
    padding = b"x-padding: " + b"a" * 1000 + b"\r\n"
    oversized = head + padding * (HEADER_CAP // len(padding) + 8) + b"\r\n"
    connection = open_tls(strict_webhook.port, authority.ca_file)
    sent_while_paused(strict_webhook, connection, oversized)

    try:
        answer = read_response(connection)
    finally:
        connection.close()
    assert answer.status == 431


def test_max_connections_admits_that_many_open_connections(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--max-connections", "2")
    connections = [open_tls(webhook.port, authority.ca_file) for _ in range(2)]
    try:
        statuses = []
        for connection in connections:
            connection.sendall(request_bytes("GET", "/healthz"))
            statuses.append(read_response(connection).status)
    finally:
        for connection in connections:
            connection.close()
    assert statuses == [200, 200]


def test_a_sub_second_idle_timeout_still_keeps_connections_alive_for_that_long(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--idle-timeout", "800ms")
    connection = open_tls(webhook.port, authority.ca_file)
    connection.sendall(request_bytes("GET", "/healthz"))
    assert read_response(connection).status == 200

    # There is no event for "still open": look after a pause well inside the idle timeout.
    time.sleep(0.2)
    try:
        connection.sendall(request_bytes("GET", "/healthz"))
        assert read_response(connection).status == 200
    except (ConnectionClosed, OSError) as error:
        pytest.fail(f"connection closed before its idle timeout: {error!r}")
    finally:
        connection.close()


def test_an_idle_keep_alive_connection_outlives_the_header_deadline(
    strict_webhook: WebhookProcess, authority: Authority
) -> None:
    # The deadline is for headers of a request that has begun, not for idle keep-alive time,
    # which the API server expects to be long.
    connection = open_tls(strict_webhook.port, authority.ca_file)
    connection.sendall(request_bytes("GET", "/healthz"))
    assert read_response(connection).status == 200
    time.sleep(HEADER_TIMEOUT * 1.5)
    assert not is_closed_by_server(connection)
    connection.sendall(request_bytes("GET", "/healthz"))
    assert read_response(connection).status == 200
    connection.close()


def test_a_connection_that_never_starts_its_tls_handshake_is_closed_at_the_header_deadline(
    strict_webhook: WebhookProcess,
) -> None:
    raw = socket.create_connection((LOOPBACK, strict_webhook.port))
    raw.settimeout(HEADER_TIMEOUT + 2)
    started = time.monotonic()
    try:
        closed = raw.recv(1) == b""
    except TimeoutError:
        closed = False
    except ConnectionResetError:
        closed = True
    finally:
        raw.close()
    assert closed, f"still open {time.monotonic() - started:.1f}s after connecting"


def test_a_body_trickled_after_an_early_answer_does_not_hold_the_connection(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--header-timeout", f"{HEADER_TIMEOUT}s", "--request-timeout", "1s")
    connection = open_tls(webhook.port, authority.ca_file)
    connection.sendall(request_bytes("POST", "/healthz",
                                     headers={"transfer-encoding": "chunked"}))
    assert read_response(connection).status == 405

    # Bounded: far longer than both deadlines at this pace.
    started = time.monotonic()
    for _ in range(25):
        if is_closed_by_server(connection):
            break
        try:
            connection.sendall(b"1\r\nx\r\n")
        except OSError:
            break
        time.sleep(TRICKLE_INTERVAL * 2)
    held = time.monotonic() - started
    connection.close()
    assert held < 2 * HEADER_TIMEOUT + 1, f"a trickled body held the connection {held:.1f}s"
