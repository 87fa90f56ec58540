"""Certificates made at test time: a CA and serving pairs for the in-cluster service name."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway_yeeter.tls import issue_certificate_authority, issue_serving_certificate

SERVICE_NAME = "gateway-yeeter.openshift-mtv.svc"
SERVING_NAMES = (SERVICE_NAME, "localhost", "127.0.0.1")


@dataclass
class Authority:
    """A test CA that writes serving pairs the way a Secret volume holds them."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ca_file: Path

    def issue(self, names: tuple[str, ...] = SERVING_NAMES, *,
              valid_for: datetime.timedelta = datetime.timedelta(days=30)) -> tuple[bytes, bytes]:
        return issue_serving_certificate((self.certificate, self.key), names, valid_for=valid_for)


def new_authority(directory: Path, name: str = "test CA") -> Authority:
    certificate, key = issue_certificate_authority(name)
    ca_file = directory / f"{name.replace(' ', '-')}.crt"
    ca_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return Authority(certificate, key, ca_file)


class SecretVolume:
    """A folder laid out as the kubelet lays out a Secret volume, with atomic updates.

    The kubelet writes each version into a new timestamped folder, points ``..data`` at it by
    renaming a fresh symlink over the old one, and exposes each key as ``key -> ..data/key``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._version = 0

    @property
    def cert_file(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "tls.key"

    def write(self, cert: bytes, key: bytes) -> None:
        self._version += 1
        version = self.root / f"..2026_12_03_00_00_00.{self._version:06d}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert)
        (version / "tls.key").write_bytes(key)

        swap = self.root / "..data_tmp"
        swap.symlink_to(version.name)
        os.replace(swap, self.root / "..data")

        for name in ("tls.crt", "tls.key"):
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def serial_of(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number
