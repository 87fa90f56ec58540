"""Start-up of ``serve``: certificates first, then the event loop, with errors as exit codes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvloop

from gateway_yeeter.config import ServeSettings
from gateway_yeeter.metrics import Metrics
from gateway_yeeter.server import bind, serve
from gateway_yeeter.tls import CertificateError, ServingCertificate, load_pair, write_self_signed

logger = logging.getLogger(__name__)

EXIT_CONFIGURATION = 2


class WebhookLoop(uvloop.Loop):
    """uvloop with a TLS handshake deadline on the listener.

    uvicorn creates its listener without one, so a client that connects and never sends a
    ClientHello would hold its connection for uvloop's default minute; the header deadline
    only starts once the handshake is done.
    """

    def __init__(self, handshake_timeout: float) -> None:
        super().__init__()
        self.handshake_timeout = handshake_timeout

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


def load_certificate(settings: ServeSettings) -> ServingCertificate:
    """Load the configured pair, or generate one when ``--self-signed`` asks for it."""
    if not settings.self_signed:
        return load_pair(settings.tls_cert_file, settings.tls_private_key_file)

    files = write_self_signed(settings.self_signed_dir)
    logger.warning(
        "serving a self-signed certificate for local use; trust its CA with "
        "curl --cacert %s", files.ca_file,
    )
    return load_pair(files.cert_file, files.key_file)


def run_server(settings: ServeSettings) -> int:
    """Run the webhook until it has drained; the process exit code."""
    try:
        certificate = load_certificate(settings)
    except CertificateError as error:
        logger.error("cannot start: %s", error)
        return EXIT_CONFIGURATION

    logger.info(
        "serving certificate loaded: serial %x, names %s, expires %s",
        certificate.serial_number,
        ",".join(certificate.subject_names) or "(none)",
        certificate.not_after.isoformat(),
    )
    try:
        listener = bind(settings)
    except OSError as error:
        logger.error(
            "cannot start: cannot listen on %s port %d (--bind-address, --secure-port): %s",
            settings.bind_address, settings.secure_port, error.strerror,
        )
        return EXIT_CONFIGURATION

    timeout = settings.limits.header_timeout
    with asyncio.Runner(loop_factory=lambda: WebhookLoop(timeout)) as runner:
        runner.run(serve(settings, certificate, Metrics(), listener))
    return 0
