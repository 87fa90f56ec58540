"""Steady review traffic from client threads, with every answer checked and recorded.

Each sender is bounded in count and in time, so a test whose server stops answering still ends
on its own; the test then reads what every request got.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import orjson

from gateway_yeeter.networks import NETWORKS_ANNOTATION
from tests.pods import review, virt_v2v_pod
from tests.webhook import apiserver_client, apply_answer, post_review


@dataclass(frozen=True)
class Exchange:
    """One request and what came back: a status and its Connection header, or an error."""

    sent_at: float
    answered_at: float | None = None
    status: int | None = None
    closes: bool = False
    error: str | None = None


def check_mutation(answer_body: bytes, sent: dict[str, object]) -> str | None:
    """Why an answer is not the expected removal of the route, or None when it is."""
    answer = orjson.loads(answer_body)
    request = sent["request"]
    assert isinstance(request, dict)
    if answer.get("response", {}).get("uid") != request["uid"]:
        return f"uid not echoed: {answer!r}"
    patched = apply_answer(answer, request["object"])
    selection = orjson.loads(patched["metadata"]["annotations"][NETWORKS_ANNOTATION])
    if any("default-route" in element for element in selection):
        return f"default-route still there: {selection!r}"
    return None


class ReviewSender(threading.Thread):
    """Posts virt-v2v reviews in a loop and records each exchange.

    With ``reconnect`` every request goes on a new connection, so each one does a handshake.
    A refused or failed connection attempt ends the loop when ``stop_when_refused`` is set:
    after a server closes its listener, that is the expected way for a client to find out.
    """

    def __init__(
        self,
        url: str,
        ca_file: Path,
        *,
        reconnect: bool = False,
        stop_when_refused: bool = False,
        max_requests: int = 3000,
        max_seconds: float = 20.0,
    ) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.ca_file = ca_file
        self.reconnect = reconnect
        self.stop_when_refused = stop_when_refused
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.exchanges: list[Exchange] = []
        self.refused_at: float | None = None
        self.first_answer = threading.Event()
        self._stop_requested = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        headers = {"connection": "close"} if self.reconnect else {}
        with apiserver_client(self.url, self.ca_file, headers=headers) as client:
            while (
                not self._stop_requested.is_set()
                and len(self.exchanges) < self.max_requests
                and time.monotonic() < deadline
            ):
                if not self._exchange(client):
                    return

    def _exchange(self, client: httpx.Client) -> bool:
        sent = review(virt_v2v_pod())
        sent_at = time.monotonic()
        try:
            response = post_review(client, orjson.dumps(sent))
        except httpx.ConnectError as error:
            if self.stop_when_refused:
                self.refused_at = time.monotonic()
                return False
            self.exchanges.append(Exchange(sent_at, error=f"connect: {error!r}"))
            return True
        except httpx.HTTPError as error:
            self.exchanges.append(Exchange(sent_at, error=repr(error)))
            return True

        answered_at = time.monotonic()
        problem = None
        if response.status_code == 200:
            problem = check_mutation(response.content, sent)
        closes = response.headers.get("connection", "").lower() == "close"
        self.exchanges.append(Exchange(sent_at, answered_at, response.status_code, closes, problem))
        self.first_answer.set()
        return True

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=30)
        assert not self.is_alive(), "sender did not stop"

    def failures(self) -> list[Exchange]:
        return [
            exchange for exchange in self.exchanges
            if exchange.error is not None or exchange.status != 200
        ]


class SenderGroup:
    """Several senders started together and stopped together."""

    def __init__(self, senders: list[ReviewSender]) -> None:
        self.senders = senders

    def __enter__(self) -> SenderGroup:
        for sender in self.senders:
            sender.start()
        for sender in self.senders:
            assert sender.first_answer.wait(10), "a sender got no answer"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for sender in self.senders:
            sender.stop()

    @property
    def exchanges(self) -> list[Exchange]:
        return [exchange for sender in self.senders for exchange in sender.exchanges]

    def failures(self) -> list[Exchange]:
        return [failure for sender in self.senders for failure in sender.failures()]
