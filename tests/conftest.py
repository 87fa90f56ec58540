"""Fixtures shared by every test folder: a test CA and a webhook process serving with it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.certs import Authority, SecretVolume, new_authority
from tests.webhook import WebhookProcess


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return new_authority(tmp_path)


@pytest.fixture
def secret_volume(tmp_path: Path, authority: Authority) -> SecretVolume:
    """A Secret volume holding a serving pair for the service name, as the kubelet mounts it."""
    volume = SecretVolume(tmp_path / "certs")
    volume.write(*authority.issue())
    return volume


StartWebhook = Callable[..., WebhookProcess]


@pytest.fixture
def start_webhook(tmp_path: Path, secret_volume: SecretVolume) -> Iterator[StartWebhook]:
    """Start webhook processes serving the Secret volume's pair; all are stopped at the end."""
    started: list[WebhookProcess] = []

    def start(*args: str) -> WebhookProcess:
        process = WebhookProcess(
            tmp_path / f"webhook-{len(started)}.log",
            "--tls-cert-file", str(secret_volume.cert_file),
            "--tls-private-key-file", str(secret_volume.key_file),
            *args,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
