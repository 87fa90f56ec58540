"""What /metrics reports after a known sequence of requests: every metric, with its value."""

from __future__ import annotations

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from gateway_yeeter.admission import SKIP_ANNOTATION
from gateway_yeeter.config import MAX_BODY_BYTES
from gateway_yeeter.metrics import LATENCY_BUCKETS, Metrics
from tests.certs import Authority, SecretVolume
from tests.conftest import StartWebhook
from tests.hardening.wire import open_tls, read_response, request_bytes, sample, scrape
from tests.pods import (
    cdi_importer_pod,
    inspection_pod,
    review_bytes,
    unrelated_pod,
    virt_v2v_pod,
)
from tests.webhook import SNI, apiserver_client, post_review

PREFIX = "gateway_yeeter_"
TWO_ROUTES = (
    '[{"name":"transfer-l2","namespace":"openshift-mtv","default-route":["192.168.50.1"]},'
    '{"name":"storage","default-route":["fd00::1"]}]'
)
NO_ROUTE = '[{"name":"transfer-l2","namespace":"openshift-mtv"}]'


def opted_out_pod() -> dict[str, object]:
    pod = virt_v2v_pod()
    pod["metadata"]["annotations"][SKIP_ANNOTATION] = "true"
    return pod


def test_metrics_count_each_outcome_route_and_bad_request_of_a_known_sequence(
    start_webhook: StartWebhook, authority: Authority, secret_volume: SecretVolume
) -> None:
    webhook = start_webhook()
    answered = {
        "mutated": [virt_v2v_pod(), cdi_importer_pod(TWO_ROUTES)],
        "unchanged": [inspection_pod(NO_ROUTE)],
        "unparsable": [virt_v2v_pod('[{"name":')],
        "ignored": [unrelated_pod()],
        "opted-out": [opted_out_pod()],
    }
    with apiserver_client(webhook.url, authority.ca_file) as client:
        for pods in answered.values():
            for pod in pods:
                assert post_review(client, review_bytes(pod)).status_code == 200
        for body in (b"not json", b'{"kind":"AdmissionReview"}'):
            assert post_review(client, body).status_code == 400

        with open_tls(webhook.port, authority.ca_file) as connection:
            connection.sendall(request_bytes(
                "POST", "/mutate", headers={"content-length": str(MAX_BODY_BYTES + 1)}))
            assert read_response(connection).status == 413

        samples = scrape(client)

    requests = "gateway_yeeter_admission_requests_total"
    for outcome, pods in answered.items():
        assert sample(samples, requests, result=outcome, code="200") == len(pods), outcome
    assert sample(samples, requests, result="bad_request", code="400") == 2
    assert sample(samples, requests, result="bad_request", code="413") == 1

    removed = "gateway_yeeter_default_routes_removed_total"
    assert sample(samples, removed, pod_kind="virt-v2v") == 1
    assert sample(samples, removed, pod_kind="cdi-importer") == 2
    assert sample(samples, removed, pod_kind="virt-v2v-inspection") == 0
    unparsable = "gateway_yeeter_unparsable_annotations_total"
    assert sample(samples, unparsable, pod_kind="virt-v2v") == 1
    assert sample(samples, unparsable, pod_kind="cdi-importer") == 0

    # The duration covers answered reviews, not refused bodies.
    duration = "gateway_yeeter_admission_duration_seconds"
    answered_count = sum(len(pods) for pods in answered.values())
    assert sample(samples, duration + "_count") == answered_count
    assert sample(samples, duration + "_bucket", le="+Inf") == answered_count
    assert 0 < sample(samples, duration + "_sum") < answered_count * 0.5
    bounds = {float(dict(labels)["le"]) for name, labels in samples
              if name == duration + "_bucket"}
    assert bounds == {*LATENCY_BUCKETS, float("inf")}
    assert sample(samples, "gateway_yeeter_admission_requests_in_flight") == 0

    leaf = x509.load_pem_x509_certificate(secret_volume.cert_file.read_bytes())
    expiry = sample(samples, "gateway_yeeter_serving_certificate_expiry_timestamp_seconds")
    assert expiry == leaf.not_valid_after_utc.timestamp()
    reloads = "gateway_yeeter_certificate_reloads_total"
    assert sample(samples, reloads, result="success") == 0
    assert sample(samples, reloads, result="failure") == 0
    assert sample(samples, "gateway_yeeter_process_resident_memory_bytes") > 0


def test_metrics_exposes_every_metric_the_metrics_module_defines(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    webhook = start_webhook()
    with apiserver_client(webhook.url, authority.ca_file) as client:
        # A review first, so that labelled metrics have children to show.
        assert post_review(client, review_bytes(virt_v2v_pod())).status_code == 200
        response = client.get("/metrics", extensions=SNI)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")

    served = {family.name for family in text_string_to_metric_families(response.text)}
    defined = {family.name for family in Metrics().registry.collect()}
    assert {name for name in defined if name.startswith(PREFIX)} <= served
    assert len([name for name in defined if name.startswith(PREFIX)]) >= 8
