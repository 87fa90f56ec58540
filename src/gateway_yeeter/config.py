"""Settings of the server, with the defaults the deployment relies on and the reasons for them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gateway_yeeter.admission import Policy

DEFAULT_CERT_DIR = Path("/etc/server/certs")

MIB = 1024 * 1024
MAX_BODY_BYTES = 7 * MIB
"""The largest AdmissionReview body accepted.

kube-apiserver admits request bodies up to 3 MiB, and a review carries the object and, on
UPDATE, the old object too, plus request metadata: two 3 MiB objects and 1 MiB to spare.
"""

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``10s``, ``1m30s``, ``500ms``) into seconds.

    A bare number counts as seconds, which is what ``timeoutSeconds`` users expect.
    """
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass

    position = 0
    seconds = 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"{text!r} is not a duration such as 10s, 500ms or 1m30s")
        seconds += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if not text:
        raise ValueError("empty duration")
    return seconds


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts and sizes that keep one slow or hostile client from starving the others."""

    header_timeout: float = 10.0
    """Time a connection gets to send a request's headers; kube-apiserver sends them at once."""

    request_timeout: float = 10.0
    """Time to receive a body; the URL's ``?timeout=`` shortens it. 10 s is the API server's
    default call timeout, after which it gives up on the answer anyway."""

    idle_timeout: float = 120.0
    """Idle keep-alive time. Longer than the API server's own 90 s idle timeout, so it is the
    client that closes idle connections: a server closing first races a request being sent,
    and the API server does not retry a webhook call."""

    max_connections: int = 1024
    """Open connections beyond which new requests get 503."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = MAX_BODY_BYTES


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Everything ``gateway-yeeter serve`` needs, checked before the server starts."""

    bind_address: str = "0.0.0.0"  # noqa: S104 - a pod serves the API server on its pod IP
    secure_port: int = 8443
    tls_cert_file: Path = DEFAULT_CERT_DIR / "tls.crt"
    tls_private_key_file: Path = DEFAULT_CERT_DIR / "tls.key"
    self_signed: bool = False
    self_signed_dir: Path | None = None
    cert_reload_interval: float = 10.0
    shutdown_delay: float = 5.0
    """Time between SIGTERM and closing the listener, for endpoints to drop this pod."""
    shutdown_timeout: float = 15.0
    """Time after the listener closes for requests in flight to be answered."""
    limits: Limits = field(default_factory=Limits)
    policy: Policy = field(default_factory=Policy)
