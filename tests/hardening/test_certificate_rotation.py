"""Serving-certificate rotation under traffic, the way service-ca and cert-manager rotate.

The kubelet publishes a new Secret version by swapping the ``..data`` symlink; the webhook polls
every ``--cert-reload-interval`` and gives the new pair to every later handshake. A pair that
cannot be served is refused with an ERROR and a failure count, and the pair in service stays.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from cryptography import x509

from tests.certs import Authority, SecretVolume, new_authority
from tests.conftest import StartWebhook
from tests.hardening.load import ReviewSender, SenderGroup
from tests.hardening.wire import (
    open_tls,
    peer_serial,
    read_response,
    request_bytes,
    sample,
    scrape,
    served_serial,
    wait_until,
)
from tests.pods import review_bytes, virt_v2v_pod
from tests.webhook import WebhookProcess, apiserver_client

RELOAD_INTERVAL = "200ms"
RELOAD_SECONDS = 0.2
# "A few poll intervals", with room for a loaded two-core machine.
PICKUP_LIMIT = 15 * RELOAD_SECONDS
RELOADS = "gateway_yeeter_certificate_reloads_total"
EXPIRY = "gateway_yeeter_serving_certificate_expiry_timestamp_seconds"
REFUSAL = "ERROR gateway_yeeter.tls: new serving certificate refused"


def leaf_of(cert: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert)


def metric_values(webhook: WebhookProcess, ca_file: Path) -> tuple[float, float, float]:
    """Reload successes, reload failures, and the expiry of the pair in service."""
    with apiserver_client(webhook.url, ca_file) as client:
        samples = scrape(client)
    return (
        sample(samples, RELOADS, result="success"),
        sample(samples, RELOADS, result="failure"),
        sample(samples, EXPIRY),
    )


def wait_for_serial(webhook: WebhookProcess, ca_file: Path, serial: int) -> float:
    return wait_until(
        lambda: served_serial(webhook.port, ca_file) == serial,
        timeout=PICKUP_LIMIT,
        what=f"new handshakes presenting serial {serial:x}",
    )


def post_on(port: int, ca_file: Path) -> None:
    """One review on a fresh connection, to prove the listener still serves."""
    with open_tls(port, ca_file) as connection:
        connection.sendall(request_bytes("POST", "/mutate", review_bytes(virt_v2v_pod())))
        assert read_response(connection).status == 200


def test_new_handshakes_get_the_rotated_pair_while_reviews_keep_flowing(
    start_webhook: StartWebhook, secret_volume: SecretVolume, authority: Authority
) -> None:
    webhook = start_webhook("--cert-reload-interval", RELOAD_INTERVAL)
    old_leaf = leaf_of(secret_volume.cert_file.read_bytes())
    assert served_serial(webhook.port, authority.ca_file) == old_leaf.serial_number

    # A connection from before the rotation, idle while it happens.
    early = open_tls(webhook.port, authority.ca_file)
    early.sendall(request_bytes("GET", "/healthz"))
    assert read_response(early).status == 200

    senders = [
        ReviewSender(webhook.url, authority.ca_file),
        ReviewSender(webhook.url, authority.ca_file, reconnect=True),
    ]
    with SenderGroup(senders) as load:
        cert, key = authority.issue(valid_for=datetime.timedelta(days=60))
        secret_volume.write(cert, key)
        took = wait_for_serial(webhook, authority.ca_file, leaf_of(cert).serial_number)

        # Keep the traffic going past the switch, not only up to it.
        served_before = len(load.exchanges)
        wait_until(lambda: len(load.exchanges) >= served_before + 40, timeout=10,
                   what="reviews answered after the rotation")

    assert took < PICKUP_LIMIT
    assert load.failures() == []

    early.sendall(request_bytes("POST", "/mutate", review_bytes(virt_v2v_pod())))
    answer = read_response(early)
    assert answer.status == 200
    assert orjson.loads(answer.body)["response"]["allowed"] is True
    assert peer_serial(early) == old_leaf.serial_number
    early.close()

    successes, failures, expiry = metric_values(webhook, authority.ca_file)
    assert (successes, failures) == (1, 0)
    assert expiry == leaf_of(cert).not_valid_after_utc.timestamp()
    assert f"serving certificate reloaded: serial {leaf_of(cert).serial_number:x}" in webhook.log()


def test_a_pair_from_a_new_ca_reaches_clients_that_trust_both_cas(
    start_webhook: StartWebhook, secret_volume: SecretVolume, authority: Authority,
    tmp_path: Path,
) -> None:
    webhook = start_webhook("--cert-reload-interval", RELOAD_INTERVAL)

    # service-ca publishes the new CA in every caBundle before it re-issues serving certs.
    successor = new_authority(tmp_path, "successor CA")
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(authority.ca_file.read_bytes() + successor.ca_file.read_bytes())

    senders = [ReviewSender(webhook.url, bundle, reconnect=True)]
    with SenderGroup(senders) as load:
        cert, key = successor.issue()
        secret_volume.write(cert, key)
        wait_for_serial(webhook, bundle, leaf_of(cert).serial_number)
        served_before = len(load.exchanges)
        wait_until(lambda: len(load.exchanges) >= served_before + 20, timeout=10,
                   what="reviews answered after the rotation")

    assert load.failures() == []
    assert metric_values(webhook, bundle)[:2] == (1, 0)


BrokenPair = Callable[[Authority], tuple[bytes, bytes]]


def mismatched_pair(authority: Authority) -> tuple[bytes, bytes]:
    cert, _ = authority.issue()
    _, other_key = authority.issue()
    return cert, other_key


def truncated_certificate(authority: Authority) -> tuple[bytes, bytes]:
    # Cut inside the leaf, as a writer caught half-way through would leave it.
    cert, key = authority.issue()
    return cert[: len(cert) // 3], key


def garbage_certificate(authority: Authority) -> tuple[bytes, bytes]:
    _, key = authority.issue()
    return b"\x00\xff this is not PEM \x1b[2J" * 64, key


def empty_key(authority: Authority) -> tuple[bytes, bytes]:
    cert, _ = authority.issue()
    return cert, b""


@pytest.mark.parametrize(
    "broken_pair",
    [mismatched_pair, truncated_certificate, garbage_certificate, empty_key],
    ids=["mismatched-key", "truncated-certificate", "garbage-certificate", "empty-key"],
)
def test_a_pair_that_cannot_be_served_is_refused_and_a_later_good_pair_is_taken(
    start_webhook: StartWebhook, secret_volume: SecretVolume, authority: Authority,
    broken_pair: BrokenPair,
) -> None:
    webhook = start_webhook("--cert-reload-interval", RELOAD_INTERVAL)
    old_leaf = leaf_of(secret_volume.cert_file.read_bytes())

    secret_volume.write(*broken_pair(authority))
    wait_until(lambda: REFUSAL in webhook.log(), timeout=PICKUP_LIMIT,
               what="an ERROR for the refused pair")
    assert served_serial(webhook.port, authority.ca_file) == old_leaf.serial_number
    post_on(webhook.port, authority.ca_file)
    assert metric_values(webhook, authority.ca_file) == (
        0, 1, old_leaf.not_valid_after_utc.timestamp()
    )

    # What is checked here is that nothing more happens, so there is no event to await:
    # five more polls must neither log nor count the same bad content again.
    time.sleep(5 * RELOAD_SECONDS)
    assert webhook.log().count(REFUSAL) == 1
    assert metric_values(webhook, authority.ca_file)[1] == 1

    cert, key = authority.issue(valid_for=datetime.timedelta(days=45))
    secret_volume.write(cert, key)
    wait_for_serial(webhook, authority.ca_file, leaf_of(cert).serial_number)
    assert metric_values(webhook, authority.ca_file) == (
        1, 1, leaf_of(cert).not_valid_after_utc.timestamp()
    )


def test_rewriting_the_same_pair_is_no_reload(
    start_webhook: StartWebhook, secret_volume: SecretVolume, authority: Authority
) -> None:
    # The kubelet rewrites a Secret volume on every sync, usually with the same content.
    webhook = start_webhook("--cert-reload-interval", RELOAD_INTERVAL)
    old_leaf = leaf_of(secret_volume.cert_file.read_bytes())
    secret_volume.write(secret_volume.cert_file.read_bytes(), secret_volume.key_file.read_bytes())

    # Nothing is to happen, so there is no event to await: give it five polls.
    time.sleep(5 * RELOAD_SECONDS)
    assert served_serial(webhook.port, authority.ca_file) == old_leaf.serial_number
    assert metric_values(webhook, authority.ca_file)[:2] == (0, 0)
    assert "serving certificate reloaded" not in webhook.log()


def test_missing_certificate_files_are_reported_once_not_at_every_poll(
    start_webhook: StartWebhook, secret_volume: SecretVolume, authority: Authority
) -> None:
    webhook = start_webhook("--cert-reload-interval", RELOAD_INTERVAL)
    old_leaf = leaf_of(secret_volume.cert_file.read_bytes())

    # The links now point nowhere, as when the volume's current version is gone.
    (secret_volume.root / "..data").unlink()
    wait_until(lambda: REFUSAL in webhook.log(), timeout=PICKUP_LIMIT,
               what="an ERROR for the missing files")
    time.sleep(5 * RELOAD_SECONDS)

    assert served_serial(webhook.port, authority.ca_file) == old_leaf.serial_number
    assert webhook.log().count(REFUSAL) == 1
    assert metric_values(webhook, authority.ca_file)[1] == 1
