"""reinvocationPolicy IfNeeded: a default route added by a later webhook is removed as well.

Another mutating webhook may edit the networks annotation after gateway-yeeter has been
called (the API server calls configurations in the order of their names). With IfNeeded the
API server calls gateway-yeeter again for the changed pod, the matchConditions are evaluated
again on it, and the second call has to work on a pod the first call already edited.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from lightkube import Client
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Pod

from gateway_yeeter.admission import REMOVED_ROUTES_ANNOTATION
from gateway_yeeter.networks import NETWORKS_ANNOTATION
from tests.certs import Authority, SecretVolume
from tests.pods import FORKLIFT_NETWORKS, virt_v2v_pod
from tests.webhook import WebhookProcess

from .cluster import LOOPBACK
from .webhook_setup import (
    MUTATE_PATH,
    Manifest,
    annotations_of,
    networks_of,
    pod_in,
    unique_name,
    wait_until,
    yeeted_pods,
)

INJECTED = {"name": "injected", "namespace": "openshift-mtv", "default-route": ["10.9.9.1"]}


class _Injector(BaseHTTPRequestHandler):
    """Appends a network with a default route to every pod it is sent, once."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["content-length"])))
        request = review["request"]
        annotations = request["object"]["metadata"].get("annotations") or {}
        networks = json.loads(annotations.get(NETWORKS_ANNOTATION) or "[]")
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if all(element.get("name") != INJECTED["name"] for element in networks):
            networks.append(INJECTED)
            patch = [
                {
                    "op": "replace",
                    "path": "/metadata/annotations/" + NETWORKS_ANNOTATION.replace("/", "~1"),
                    "value": json.dumps(networks, separators=(",", ":")),
                }
            ]
            response |= {
                "patchType": "JSONPatch",
                "patch": base64.b64encode(json.dumps(patch).encode()).decode(),
            }

        answer = {
            "apiVersion": review["apiVersion"],
            "kind": "AdmissionReview",
            "response": response,
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the API server's log tells about failed calls."""


@pytest.fixture
def injector(tmp_path: Path, authority: Authority) -> Iterator[str]:
    """A second webhook's URL, on loopback, serving with a certificate from the test CA."""
    volume = SecretVolume(tmp_path / "injector-certs")
    volume.write(*authority.issue())
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(volume.cert_file, volume.key_file)

    server = ThreadingHTTPServer((LOOPBACK, 0), _Injector)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://{LOOPBACK}:{server.server_address[1]}{MUTATE_PATH}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _injector_configuration(url: str, ca_bundle: bytes) -> Manifest:
    # Named to sort after "gateway-yeeter-...", so the API server calls it second; Never, so
    # that only gateway-yeeter's own policy decides whether there is a second round.
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": unique_name("later-injector")},
        "webhooks": [
            {
                "name": "injector.e2e.test",
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_bundle).decode()},
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ],
                "objectSelector": {"matchLabels": {"forklift.app": "virt-v2v"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
            }
        ],
    }


def _injected_by_dry_run(client: Client, namespace: str) -> bool:
    pod = pod_in(namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name=unique_name("probe"))
    answered = client.create(pod, dry_run=True)
    return any(element["name"] == INJECTED["name"] for element in networks_of(answered))


@contextlib.contextmanager
def _injector_registered(
    client: Client, namespace: str, url: str, ca_bundle: bytes
) -> Iterator[None]:
    configuration = _injector_configuration(url, ca_bundle)
    client.create(
        cast(MutatingWebhookConfiguration, MutatingWebhookConfiguration.from_dict(configuration))
    )
    try:
        wait_until(
            lambda: _injected_by_dry_run(client, namespace),
            what="the injector's configuration taking effect",
        )
        yield
    finally:
        client.delete(MutatingWebhookConfiguration, configuration["metadata"]["name"])
        wait_until(
            lambda: not _injected_by_dry_run(client, namespace),
            what="the injector's configuration going away",
        )


def test_default_route_added_by_a_later_webhook_is_removed_and_recorded_on_reinvocation(
    kube_client: Client,
    namespace: str,
    deployed_webhook: WebhookProcess,
    injector: str,
    authority: Authority,
) -> None:
    with _injector_registered(kube_client, namespace, injector, authority.ca_file.read_bytes()):
        created = kube_client.create(
            pod_in(namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name="reinvoked")
        )
    stored = kube_client.get(Pod, "reinvoked", namespace=namespace)

    for pod in (created, stored):
        assert networks_of(pod) == [
            {"name": "transfer-l2", "namespace": "openshift-mtv"},
            {"name": "injected", "namespace": "openshift-mtv"},
        ]
    yeeting = [line for line in deployed_webhook.log().splitlines() if "/reinvoked (" in line]
    assert len(yeeting) == 2, yeeting
    assert f"{namespace}/reinvoked" in yeeted_pods(deployed_webhook)

    # The second call adds to the record of what the first one removed.
    record = json.loads(annotations_of(created)[REMOVED_ROUTES_ANNOTATION])
    assert record == [
        {"network": "openshift-mtv/transfer-l2", "default-route": ["192.168.50.1"]},
        {"network": "openshift-mtv/injected", "default-route": ["10.9.9.1"]},
    ]
