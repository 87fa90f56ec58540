"""Bench only: one ``gateway-yeeter serve`` process on a port shared through SO_REUSEPORT.

Start several of these on one port and the kernel spreads new connections across them; the
benchmark uses it to ask whether a second process pays on a two-core machine. The server is
the one ``serve`` builds, with its own certificate, metrics and logs; only the socket differs.
"""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import uvloop

from gateway_yeeter.config import ServeSettings
from gateway_yeeter.logs import configure_logging
from gateway_yeeter.metrics import Metrics
from gateway_yeeter.runner import load_certificate
from gateway_yeeter.server import serve


def shared_socket(address: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((address, port))
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert-file", type=Path, required=True)
    parser.add_argument("--tls-private-key-file", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    arguments = parser.parse_args()

    configure_logging(log_format="text", level=arguments.log_level)
    settings = ServeSettings(
        bind_address="127.0.0.1",
        secure_port=arguments.port,
        tls_cert_file=arguments.tls_cert_file,
        tls_private_key_file=arguments.tls_private_key_file,
        shutdown_delay=0.0,
    )
    certificate = load_certificate(settings)
    listener = shared_socket(settings.bind_address, arguments.port)
    uvloop.run(serve(settings, certificate, Metrics(), listener))


if __name__ == "__main__":
    main()
