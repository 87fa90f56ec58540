"""Byte-level access to a running webhook, for the cases an HTTP client library hides.

httpx reconnects, buffers and retries on its own; a test that must know exactly when a
connection was opened, what was sent on it and when it was closed speaks HTTP/1.1 over a
plain TLS socket instead.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.certs import SERVICE_NAME
from tests.webhook import SNI, apiserver_tls

LOOPBACK = "127.0.0.1"


def open_tls(port: int, ca_file: Path, *, timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection whose handshake is complete, verified as kube-apiserver verifies."""
    raw = socket.create_connection((LOOPBACK, port), timeout=timeout)
    return apiserver_tls(ca_file).wrap_socket(raw, server_hostname=SERVICE_NAME)


def served_serial(port: int, ca_file: Path) -> int:
    """The serial number of the certificate a new handshake is given."""
    with open_tls(port, ca_file) as connection:
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def peer_serial(connection: ssl.SSLSocket) -> int:
    der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def request_bytes(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
) -> bytes:
    """An HTTP/1.1 request as one buffer; Content-Length is added unless headers set framing."""
    lines = [f"{method} {path} HTTP/1.1", f"host: {SERVICE_NAME}"]
    given = {name.lower(): value for name, value in (headers or {}).items()}
    if "content-length" not in given and "transfer-encoding" not in given and body:
        given["content-length"] = str(len(body))
    lines += [f"{name}: {value}" for name, value in given.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    @property
    def closes(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


class ConnectionClosed(Exception):
    """The server closed the connection before a complete response arrived."""


def read_response(connection: ssl.SSLSocket) -> RawResponse:
    """Read one response framed by Content-Length, as every answer of this server is."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"closed after {len(buffer)} bytes of response head")
        buffer += chunk

    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()

    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionClosed(f"closed after {len(rest)} of {length} body bytes")
        rest += chunk
    return RawResponse(int(status_line.split()[1]), headers, rest[:length])


def is_closed_by_server(connection: ssl.SSLSocket) -> bool:
    """Tell whether the server has closed this connection, without waiting for it to."""
    connection.setblocking(False)
    try:
        return connection.recv(1) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        connection.setblocking(True)


def listener_refuses(port: int) -> bool:
    """Tell whether nothing accepts TCP connections on this port any more."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str,
               interval: float = 0.01) -> float:
    """Poll a condition that has no event to await; return how long it took to hold."""
    started = time.monotonic()
    deadline = started + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of /metrics, keyed by sample name and label set."""
    response = client.get("/metrics", extensions=SNI)
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
