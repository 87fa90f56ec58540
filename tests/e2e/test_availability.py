"""No pod creation fails while the webhook's certificate rotates or one of its replicas stops.

Both run under failurePolicy Fail (deploy/ as shipped), where any failed call through the API
server would refuse a pod; each test keeps creating pods through the API server while the
change happens, and counts the pods that were refused or came back unedited.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from lightkube import ApiError, Client

from tests.certs import Authority, SecretVolume, new_authority
from tests.conftest import StartWebhook
from tests.pods import FORKLIFT_NETWORKS, virt_v2v_pod

from .balancer import ReadinessBalancer
from .cluster import LocalCluster
from .webhook_setup import (
    MUTATE_PATH,
    CreationLoop,
    Manifest,
    ProbeResult,
    admission_requests,
    certificate_reloads,
    pod_in,
    pointed_at_loopback,
    refusal_of,
    registered_webhooks,
    served_certificate_issuer,
    unique_name,
    wait_until,
    webhook_tls,
    yeeted_pods,
)

# Bounds on the loops; each stops early, once enough creates followed the change under test.
CREATE_LIMIT = 2000
CREATES_BEFORE_CHANGE = 40
CREATES_AFTER_CHANGE = 40


def test_rotation_to_a_new_ca_while_pods_are_created_refuses_none(
    *,
    local_cluster: LocalCluster,
    kube_client: Client,
    namespace: str,
    deploy_configuration: Manifest,
    authority: Authority,
    secret_volume: SecretVolume,
    start_webhook: StartWebhook,
    tmp_path: Path,
) -> None:
    # service-ca's CA rotation: the caBundle trusts old and new CA before the serving
    # certificate is re-issued by the new one, and drops the old CA later.
    rotated = new_authority(tmp_path, "rotated CA")
    old_ca, new_ca = authority.ca_file.read_bytes(), rotated.ca_file.read_bytes()
    webhook = start_webhook("--cert-reload-interval", "200ms")
    configuration = pointed_at_loopback(
        deploy_configuration,
        name=unique_name("gateway-yeeter"),
        url=webhook.url + MUTATE_PATH,
        ca_bundle=old_ca + new_ca,
    )

    with registered_webhooks(kube_client, configuration, probe_namespace=namespace) as registered:
        loop = CreationLoop(local_cluster, namespace, "rotation", limit=CREATE_LIMIT).start()
        try:
            loop.wait_for(CREATES_BEFORE_CHANGE)
            secret_volume.write(*rotated.issue())
            wait_until(
                lambda: certificate_reloads(webhook, old_ca + new_ca) >= 1,
                what="the webhook reloading its certificate",
            )
            created_before_reload = len(loop.creations)
            issuer = served_certificate_issuer(webhook.port, old_ca + new_ca)
            loop.wait_for(created_before_reload + CREATES_AFTER_CHANGE)
        finally:
            loop.stop()

        assert issuer == rotated.certificate.subject
        assert loop.failures() == []
        assert loop.unmutated() == []
        assert len(loop.creations) >= created_before_reload + CREATES_AFTER_CHANGE

        # A caBundle of the old CA alone must now fail: a changed clientConfig gets a new
        # client, whose new connections meet the new certificate. Seeing that refusal also
        # tells when the API server has taken up a caBundle change.
        registered.set_ca_bundle(old_ca)
        registered.wait_for_probe(ProbeResult.REFUSED, what="the old CA alone being refused")
        with pytest.raises(ApiError) as refused:
            kube_client.create(
                pod_in(namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name="old-ca-only"),
                dry_run=True,
            )
        assert "x509: certificate signed by unknown authority" in refusal_of(refused.value)

        registered.set_ca_bundle(new_ca)
        registered.wait_for_probe(ProbeResult.MUTATED, what="the new CA alone being accepted")
        after = CreationLoop(local_cluster, namespace, "new-ca", limit=CREATES_AFTER_CHANGE)
        after.run()

    assert after.failures() == []
    assert after.unmutated() == []
    assert len(after.creations) == CREATES_AFTER_CHANGE


def test_sigterm_of_one_of_two_replicas_while_pods_are_created_refuses_none(
    *,
    local_cluster: LocalCluster,
    kube_client: Client,
    namespace: str,
    deploy_configuration: Manifest,
    authority: Authority,
    start_webhook: StartWebhook,
) -> None:
    ca_bundle = authority.ca_file.read_bytes()
    replicas = [start_webhook("--shutdown-delay", "2s") for _ in range(2)]

    with ReadinessBalancer(
        [replica.port for replica in replicas], webhook_tls(ca_bundle)
    ) as balancer:
        wait_until(lambda: all(balancer.ready.values()), what="both replicas ready")
        configuration = pointed_at_loopback(
            deploy_configuration,
            name=unique_name("gateway-yeeter"),
            url=balancer.url + MUTATE_PATH,
            ca_bundle=ca_bundle,
        )
        with registered_webhooks(kube_client, configuration, probe_namespace=namespace):
            loop = CreationLoop(local_cluster, namespace, "drain", limit=CREATE_LIMIT).start()
            try:
                # Stop the replica the API server is talking to, or the test proves nothing.
                loop.wait_for(CREATES_BEFORE_CHANGE // 2)
                counts = [admission_requests(replica, ca_bundle) for replica in replicas]
                loop.wait_for(CREATES_BEFORE_CHANGE)
                serving = [
                    replica
                    for replica, count in zip(replicas, counts, strict=True)
                    if admission_requests(replica, ca_bundle) > count
                ]
                assert serving, "neither replica answered the API server"
                stopped = serving[0]
                survivor = next(replica for replica in replicas if replica is not stopped)

                created_before_signal = len(loop.creations)
                stopped.signal(signal.SIGTERM)
                exit_code = stopped.wait(timeout=30)
                created_before_exit = len(loop.creations)
                loop.wait_for(created_before_exit + CREATES_AFTER_CHANGE)
            finally:
                loop.stop()

    assert exit_code == 0
    assert loop.failures() == []
    assert loop.unmutated() == []

    # The creates are sequential, so the API server holds one connection at a time: the
    # stopped replica answered at least the next create after SIGTERM on it, and closed it.
    after_signal = {f"{namespace}/{c.name}" for c in loop.creations[created_before_signal:]}
    assert after_signal & yeeted_pods(stopped)
    assert "draining" in stopped.log()

    later = {f"{namespace}/{c.name}" for c in loop.creations[created_before_exit:]}
    assert len(later) >= CREATES_AFTER_CHANGE
    assert later <= yeeted_pods(survivor)
