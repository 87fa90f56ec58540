"""What the webhook adds to a pod create through kube-apiserver, measured and reported.

Both series create the same virt-v2v pods, with a default route, one at a time through the
API server; with the webhook registered each create includes the call to it. The figures
are reported in the terminal summary and bench/e2e-latency.json. They are not asserted on:
on a shared two-core machine they say what it costs, not whether a change made it worse.
"""

from __future__ import annotations

import pytest
from lightkube import Client

from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.webhook import WebhookProcess

from .cluster import LocalCluster
from .latency import Latency, report
from .webhook_setup import (
    MUTATE_PATH,
    CreationLoop,
    Manifest,
    metric_samples,
    pointed_at_loopback,
    registered_webhooks,
    unique_name,
)

CREATES = 300
# Not counted: the first creates pay for new connections and cold caches in the API server.
WARM_UP = 20


def _timed(cluster: LocalCluster, namespace: str, prefix: str, *, count: int) -> CreationLoop:
    loop = CreationLoop(cluster, namespace, prefix, limit=count)
    loop.run()
    return loop


def _answering_seconds(webhook: WebhookProcess, ca_bundle: bytes) -> tuple[float, float]:
    """The webhook's own histogram of body-to-answer time: (sum of seconds, count)."""
    total = metric_samples(webhook, ca_bundle, "gateway_yeeter_admission_duration_seconds_sum")
    count = metric_samples(webhook, ca_bundle, "gateway_yeeter_admission_duration_seconds_count")
    return total[0].value, count[0].value


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    return (after[0] - before[0]) / (after[1] - before[1]) * 1000


def test_pod_create_latency_with_and_without_the_webhook_is_reported(
    *,
    local_cluster: LocalCluster,
    kube_client: Client,
    namespace: str,
    deploy_configuration: Manifest,
    start_webhook: StartWebhook,
    authority: Authority,
    request: pytest.FixtureRequest,
) -> None:
    ca_bundle = authority.ca_file.read_bytes()
    _timed(local_cluster, namespace, "bare-warm-up", count=WARM_UP)
    without = _timed(local_cluster, namespace, "bare", count=CREATES)

    webhook = start_webhook()
    configuration = pointed_at_loopback(
        deploy_configuration,
        name=unique_name("gateway-yeeter"),
        url=webhook.url + MUTATE_PATH,
        ca_bundle=ca_bundle,
    )
    with registered_webhooks(kube_client, configuration, probe_namespace=namespace):
        _timed(local_cluster, namespace, "hooked-warm-up", count=WARM_UP)
        inside_before = _answering_seconds(webhook, ca_bundle)
        with_webhook = _timed(local_cluster, namespace, "hooked", count=CREATES)
        inside_after = _answering_seconds(webhook, ca_bundle)

    # The series measure what they claim: the webhook in the path of every create, or of none.
    assert without.failures() == with_webhook.failures() == []
    assert len(without.unmutated()) == CREATES
    assert with_webhook.unmutated() == []

    report(
        request.config,
        without=Latency.of([creation.seconds for creation in without.creations]),
        with_webhook=Latency.of([creation.seconds for creation in with_webhook.creations]),
        answering_ms=_mean_ms(inside_before, inside_after),
    )
