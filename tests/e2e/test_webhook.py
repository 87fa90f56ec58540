"""The webhook as kube-apiserver calls it through the configuration deploy/ ships.

Every pod here is created through the API server, which decides from the configuration's
objectSelectors and matchConditions whether to call the webhook at all, applies the patch it
answers with, and follows the failurePolicy when it cannot reach it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Pod

from gateway_yeeter.admission import REMOVED_ROUTES_ANNOTATION
from gateway_yeeter.networks import NETWORKS_ANNOTATION
from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.pods import (
    FORKLIFT_NETWORKS,
    cdi_importer_pod,
    inspection_pod,
    unrelated_pod,
    virt_v2v_pod,
)
from tests.webhook import WebhookProcess

from .cluster import LocalCluster
from .webhook_setup import (
    DEPLOY_DIR,
    MUTATE_PATH,
    REPO_ROOT,
    Manifest,
    ProbeResult,
    admission_requests,
    annotations_of,
    is_mutated,
    networks_of,
    pod_in,
    pointed_at_loopback,
    port_is_closed,
    refusal_of,
    registered_webhooks,
    render,
    unique_name,
    webhook_configuration_of,
    yeeted_pods,
)

# Every key Multus reads, a reverse-DNS key of someone else's, and a second network: the edit
# must take `default-route` off the transfer network and leave everything else where it was.
TRANSFER_ELEMENT: dict[str, Any] = {
    "name": "transfer-l2",
    "namespace": "openshift-mtv",
    "interface": "net1",
    "ips": ["192.168.50.20/24"],
    "mac": "02:00:00:00:50:20",
    "default-route": ["192.168.50.1"],
    "infiniband-guid": "c2:11:22:33:44:55:66:77",
    "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
    "bandwidth": {"ingressRate": 1000, "egressRate": 1000},
    "cni-args": {"vlan": 50},
    "ipam-claim-reference": "transfer-claim",
    "example.com/placement": "rack-7",
}
STORAGE_ELEMENT: dict[str, Any] = {"name": "storage", "interface": "net2"}
RICH_NETWORKS = json.dumps([TRANSFER_ELEMENT, STORAGE_ELEMENT], separators=(",", ":"))
RICH_NETWORKS_EDITED = [
    {key: value for key, value in TRANSFER_ELEMENT.items() if key != "default-route"},
    STORAGE_ELEMENT,
]
REMOVED_RECORD = [{"network": "openshift-mtv/transfer-l2", "default-route": ["192.168.50.1"]}]

FORKLIFT_PODS: dict[str, Callable[[str], Manifest]] = {
    "virt-v2v": virt_v2v_pod,
    "inspection": inspection_pod,
    "cdi-importer": cdi_importer_pod,
}

# The pod kind each webhook of deploy/ is for, with a default route for it to take off.
POD_FOR_WEBHOOK: dict[str, Callable[[], Manifest]] = {
    "virt-v2v.gateway.yeet": lambda: virt_v2v_pod(FORKLIFT_NETWORKS),
    "virt-v2v-inspection.gateway.yeet": lambda: inspection_pod(FORKLIFT_NETWORKS),
    "cdi.gateway.yeet": lambda: cdi_importer_pod(FORKLIFT_NETWORKS),
}

# deploy/README.md, "The decisions" > failurePolicy: the rule the manifests must follow.
README_POLICY_RULE = re.compile(
    r"`Fail` for all three webhooks where matchConditions exist, `Ignore` where they do not\."
)


def _assert_edited(pod: Pod, sent: Manifest) -> None:
    """The networks annotation lost its default route and nothing else; the rest is as sent."""
    annotations = annotations_of(pod)
    edited = networks_of(pod)

    assert edited == RICH_NETWORKS_EDITED
    assert [list(element) for element in edited] == [list(e) for e in RICH_NETWORKS_EDITED]
    assert json.loads(annotations.pop(REMOVED_ROUTES_ANNOTATION)) == REMOVED_RECORD
    del annotations[NETWORKS_ANNOTATION]
    assert annotations == {
        key: value
        for key, value in sent["metadata"]["annotations"].items()
        if key != NETWORKS_ANNOTATION
    }
    assert pod.metadata is not None
    assert pod.metadata.labels == sent["metadata"]["labels"]


@pytest.mark.parametrize("kind", FORKLIFT_PODS)
def test_forklift_pod_is_created_and_stored_without_its_default_route(
    kind: str, kube_client: Client, namespace: str, deployed_webhook: WebhookProcess
) -> None:
    sent = FORKLIFT_PODS[kind](RICH_NETWORKS)

    created = kube_client.create(pod_in(namespace, sent))
    assert created.metadata is not None
    assert created.metadata.name is not None
    stored = kube_client.get(Pod, created.metadata.name, namespace=namespace)

    _assert_edited(created, sent)
    _assert_edited(stored, sent)
    # The API server makes a name from generateName only after admission, so the webhook saw
    # none and logs the prefix; the CDI importer has a name of its own.
    logged_as = sent["metadata"].get("name") or sent["metadata"]["generateName"] + "*"
    assert f"{namespace}/{logged_as}" in yeeted_pods(deployed_webhook)


# Each is filtered by the API server before any call: by an objectSelector, or by the
# matchConditions, which let through only annotations that mention a default route.
UNTOUCHED_PODS: dict[str, Manifest] = {
    "cdi-importer-without-plan-label": cdi_importer_pod(RICH_NETWORKS, forklift=False),
    "virt-v2v-shorthand": virt_v2v_pod("openshift-mtv/transfer-l2@net1"),
    "virt-v2v-json-without-default-route": virt_v2v_pod(
        '[{"name":"transfer-l2","namespace":"openshift-mtv","interface":"net1"}]'
    ),
    "virt-v2v-without-networks": virt_v2v_pod(None),
    "unrelated-with-default-route": unrelated_pod(),
}


def test_pods_that_need_no_edit_are_not_even_sent_to_the_webhook(
    kube_client: Client, namespace: str, deployed_webhook: WebhookProcess, authority: Authority
) -> None:
    ca_bundle = authority.ca_file.read_bytes()
    before = admission_requests(deployed_webhook, ca_bundle)

    for name, sent in UNTOUCHED_PODS.items():
        created = kube_client.create(pod_in(namespace, sent, name=name))
        stored = kube_client.get(Pod, name, namespace=namespace)
        for pod in (created, stored):
            assert annotations_of(pod) == sent["metadata"]["annotations"], name
    after_untouched = admission_requests(deployed_webhook, ca_bundle)

    # The control: the counter does move for a pod the API server does send.
    kube_client.create(pod_in(namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name="control"))
    after_control = admission_requests(deployed_webhook, ca_bundle)

    assert after_untouched == before
    assert after_control == before + 1
    log = deployed_webhook.log()
    assert [name for name in UNTOUCHED_PODS if f"{namespace}/{name}" in log] == []


def test_server_side_dry_run_create_shows_the_edit_and_stores_nothing(
    kube_client: Client, namespace: str, deployed_webhook: WebhookProcess
) -> None:
    sent = virt_v2v_pod(RICH_NETWORKS)

    answered = kube_client.create(pod_in(namespace, sent, name="dry-run"), dry_run=True)

    _assert_edited(answered, sent)
    with pytest.raises(ApiError) as not_found:
        kube_client.get(Pod, "dry-run", namespace=namespace)
    assert not_found.value.status.code == 404
    # The webhook was told it was a dry run (sideEffects: None lets the API server send it).
    yeeting = [line for line in deployed_webhook.log().splitlines() if "YEETING" in line]
    assert [line for line in yeeting if f"{namespace}/dry-run " in line and "dry_run=True" in line]


@pytest.mark.parametrize("kustomization", ["deploy", "deploy/overlays/openshift-before-4.17"])
def test_webhook_outage_follows_each_webhooks_failure_policy(
    *,
    kustomization: str,
    kustomize_binary: Path,
    kube_client: Client,
    namespace: str,
    start_webhook: StartWebhook,
    authority: Authority,
    local_cluster: LocalCluster,
) -> None:
    rendered = webhook_configuration_of(render(kustomize_binary, REPO_ROOT / kustomization))
    policies = {webhook["name"]: webhook["failurePolicy"] for webhook in rendered["webhooks"]}
    timeouts = {webhook["name"]: webhook["timeoutSeconds"] for webhook in rendered["webhooks"]}
    assert set(policies) == set(POD_FOR_WEBHOOK)

    # The README's rule: Fail where matchConditions keep unrelated pods away, else Ignore.
    readme = " ".join((DEPLOY_DIR / "README.md").read_text().split())
    assert README_POLICY_RULE.search(readme), "deploy/README.md no longer states the rule"
    documented = {
        webhook["name"]: "Fail" if webhook.get("matchConditions") else "Ignore"
        for webhook in rendered["webhooks"]
    }
    assert policies == documented

    webhook = start_webhook()
    port = webhook.port
    configuration = pointed_at_loopback(
        rendered,
        name=unique_name("gateway-yeeter"),
        url=webhook.url + MUTATE_PATH,
        ca_bundle=authority.ca_file.read_bytes(),
    )
    with registered_webhooks(kube_client, configuration, probe_namespace=namespace) as registered:
        # Each webhook is called for its pod while the server is up, so what follows is
        # the outage and not a pod the configuration never matched.
        for webhook_name, make_pod in POD_FOR_WEBHOOK.items():
            answered = kube_client.create(pod_in(namespace, make_pod()), dry_run=True)
            assert is_mutated(answered), webhook_name

        webhook.stop()
        assert port_is_closed(port)

        for webhook_name, make_pod in POD_FOR_WEBHOOK.items():
            pod_name = f"outage-{webhook_name.split('.')[0]}"
            pod = pod_in(namespace, make_pod(), name=pod_name)

            if policies[webhook_name] == "Fail":
                with pytest.raises(ApiError) as refused:
                    kube_client.create(pod)
                message = refusal_of(refused.value)
                assert f'failed calling webhook "{webhook_name}"' in message
                assert "connection refused" in message
                # The call carried the configuration's own timeoutSeconds.
                assert f"/mutate?timeout={timeouts[webhook_name]}s" in message
                with pytest.raises(ApiError) as not_found:
                    kube_client.get(Pod, pod_name, namespace=namespace)
                assert not_found.value.status.code == 404
            else:
                kube_client.create(pod)
                stored = kube_client.get(Pod, pod_name, namespace=namespace)
                assert annotations_of(stored)[NETWORKS_ANNOTATION] == FORKLIFT_NETWORKS
                assert REMOVED_ROUTES_ANNOTATION not in annotations_of(stored)
                # The API server did call, and says it let the pod through.
                failing_open = f"failing open {webhook_name}: "
                assert [
                    line
                    for line in local_cluster.apiserver_log.read_text().splitlines()
                    if failing_open in line and f"127.0.0.1:{port}/" in line
                ]

        # Back on the same port, the webhook is called again with no change to the configuration.
        start_webhook("--secure-port", str(port))
        registered.wait_for_probe(ProbeResult.MUTATED, what="the restarted webhook being called")
