"""SIGTERM drops no request: the drain the API server needs from a terminating webhook pod.

kube-apiserver does not retry a webhook call and does not move its keep-alive connections off a
terminating pod by itself. So after SIGTERM the webhook reports unready at once, answers with
``Connection: close`` for ``--shutdown-delay``, then closes the listener and still answers every
request on a connection it had accepted, and exits 0.
"""

from __future__ import annotations

import signal
import time

import orjson

from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.hardening.load import ReviewSender, SenderGroup, check_mutation
from tests.hardening.wire import (
    RawResponse,
    is_closed_by_server,
    listener_refuses,
    open_tls,
    read_response,
    request_bytes,
    wait_until,
)
from tests.pods import review, virt_v2v_pod
from tests.webhook import WebhookProcess

SHUTDOWN_DELAY = 1.0
HEADER_TIMEOUT = 3.0
DRAIN_FLAGS = (
    "--shutdown-delay", f"{SHUTDOWN_DELAY}s",
    "--header-timeout", f"{HEADER_TIMEOUT}s",
    "--shutdown-timeout", "5s",
)


def readyz(webhook: WebhookProcess, authority: Authority) -> RawResponse:
    with open_tls(webhook.port, authority.ca_file) as connection:
        connection.sendall(request_bytes("GET", "/readyz"))
        return read_response(connection)


def wait_for_listener_closed(webhook: WebhookProcess) -> float:
    """Wait for the listener to close; the time it closed, from this process's clock."""
    wait_until(lambda: listener_refuses(webhook.port), timeout=SHUTDOWN_DELAY + 5,
               what="the listener closing")
    return time.monotonic()


def post_and_check(connection_response: RawResponse, sent: dict[str, object]) -> None:
    assert connection_response.status == 200
    assert check_mutation(connection_response.body, sent) is None


def test_sigterm_under_keep_alive_load_answers_every_accepted_request(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook(*DRAIN_FLAGS)
    senders = [
        ReviewSender(webhook.url, authority.ca_file, stop_when_refused=True)
        for _ in range(4)
    ]
    with SenderGroup(senders) as load:
        assert readyz(webhook, authority).status == 200
        signalled_at = time.monotonic()
        webhook.signal(signal.SIGTERM)

        wait_until(lambda: readyz(webhook, authority).status == 503, timeout=2,
                   what="/readyz turning 503")
        draining_at = time.monotonic()
        answer = readyz(webhook, authority)
        assert (answer.status, answer.body) == (503, b"draining\n")

        closed_at = wait_for_listener_closed(webhook)
        for sender in senders:
            sender.join(timeout=HEADER_TIMEOUT + 10)
            assert not sender.is_alive(), "a sender kept running after the listener closed"

    assert webhook.wait(timeout=15) == 0
    assert closed_at - signalled_at >= SHUTDOWN_DELAY * 0.9, "listener closed before the delay"

    # Every request got a full, correct answer; the only way out was a refused connection.
    assert load.failures() == []
    for sender in senders:
        assert sender.refused_at is not None
        assert sender.refused_at - signalled_at >= SHUTDOWN_DELAY * 0.9

    during_delay = [exchange for exchange in load.exchanges
                    if draining_at <= exchange.sent_at < closed_at - 0.1]
    assert len(during_delay) >= 10, "too little traffic during the delay to tell anything"
    assert all(exchange.closes for exchange in during_delay)
    before = [exchange for exchange in load.exchanges
              if exchange.answered_at is not None and exchange.answered_at < signalled_at]
    assert before
    assert not any(exchange.closes for exchange in before)
    assert "SIGTERM received: draining" in webhook.log()


def test_connections_open_before_the_listener_closes_are_answered_after_it_closes(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook(*DRAIN_FLAGS)

    # One connection has served a request and sits idle; one is fresh from its handshake.
    used = open_tls(webhook.port, authority.ca_file)
    used.sendall(request_bytes("GET", "/healthz"))
    assert read_response(used).status == 200
    webhook.signal(signal.SIGTERM)
    fresh = open_tls(webhook.port, authority.ca_file)

    closed_at = wait_for_listener_closed(webhook)
    for connection in (used, fresh):
        sent = review(virt_v2v_pod())
        connection.sendall(request_bytes("POST", "/mutate", orjson.dumps(sent)))
        answer = read_response(connection)
        post_and_check(answer, sent)
        assert answer.closes
        assert connection.recv(1) == b"", "the connection stayed open after its answer"
        connection.close()

    assert time.monotonic() - closed_at < HEADER_TIMEOUT, "answered too late to count"
    assert webhook.wait(timeout=10) == 0


def test_a_request_half_sent_when_the_listener_closes_is_completed_and_answered(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook(*DRAIN_FLAGS)
    sent = review(virt_v2v_pod())
    request = request_bytes("POST", "/mutate", orjson.dumps(sent))

    connection = open_tls(webhook.port, authority.ca_file)
    connection.sendall(request[: len(request) // 2])
    webhook.signal(signal.SIGTERM)
    wait_for_listener_closed(webhook)
    connection.sendall(request[len(request) // 2 :])

    answer = read_response(connection)
    post_and_check(answer, sent)
    assert answer.closes
    connection.close()
    assert webhook.wait(timeout=10) == 0


def test_an_idle_connection_that_never_sends_is_closed_at_the_header_deadline(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--shutdown-delay", "0.2s", "--header-timeout", "1s",
                            "--shutdown-timeout", "5s")
    silent = open_tls(webhook.port, authority.ca_file)
    silent.sendall(request_bytes("GET", "/healthz"))
    assert read_response(silent).status == 200

    webhook.signal(signal.SIGTERM)
    closed_at = wait_for_listener_closed(webhook)
    silent.settimeout(5)
    assert silent.recv(1) == b""
    waited = time.monotonic() - closed_at
    silent.close()

    assert 0.5 <= waited <= 2.5, f"idle connection closed {waited:.2f}s after the listener"
    assert webhook.wait(timeout=10) == 0


def test_a_second_sigterm_exits_without_waiting_for_the_delay(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--shutdown-delay", "30s")
    webhook.signal(signal.SIGTERM)
    wait_until(lambda: readyz(webhook, authority).status == 503, timeout=2,
               what="/readyz turning 503")
    webhook.signal(signal.SIGTERM)
    assert webhook.wait(timeout=5) == 0
    assert "exiting without waiting for requests" in webhook.log()


def test_a_sub_second_shutdown_timeout_still_lets_a_request_in_flight_finish(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook("--shutdown-delay", "0s", "--shutdown-timeout", "800ms")
    sent = review(virt_v2v_pod())
    request = request_bytes("POST", "/mutate", orjson.dumps(sent))

    connection = open_tls(webhook.port, authority.ca_file)
    connection.sendall(request[:200])
    webhook.signal(signal.SIGTERM)
    wait_for_listener_closed(webhook)
    # The rest of the body takes a while, as it may from a busy API server: longer than the
    # 0.1 s uvicorn always waits, well within the 0.8 s the flag grants.
    time.sleep(0.3)
    connection.sendall(request[200:])

    answer = read_response(connection)
    connection.close()
    post_and_check(answer, sent)


def test_answers_during_the_delay_close_their_connection(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook(*DRAIN_FLAGS)
    webhook.signal(signal.SIGTERM)
    wait_until(lambda: readyz(webhook, authority).status == 503, timeout=2,
               what="/readyz turning 503")

    # During the delay the answer itself closes the connection, so the client moves on.
    connection = open_tls(webhook.port, authority.ca_file)
    connection.sendall(request_bytes("GET", "/healthz"))
    answer = read_response(connection)
    assert (answer.status, answer.closes) == (200, True)
    wait_until(lambda: is_closed_by_server(connection), timeout=2,
               what="the server closing the connection after its answer")
    connection.close()
    assert webhook.wait(timeout=10) == 0
