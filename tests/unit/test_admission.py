"""The admission rule: which requests get a patch, and what the patch does to the pod."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from gateway_yeeter.admission import (
    AUDIT_ANNOTATION,
    REMOVED_ROUTES_ANNOTATION,
    SKIP_ANNOTATION,
    Outcome,
    Policy,
    decide,
)
from gateway_yeeter.review import AdmissionRequest, decode_review
from gateway_yeeter.targeting import PodKind
from tests.pods import (
    NETWORKS,
    cdi_importer_pod,
    inspection_pod,
    review,
    unrelated_pod,
    virt_v2v_pod,
)
from tests.webhook import apply_answer


def request_for(pod: dict[str, Any], **kwargs: Any) -> AdmissionRequest:
    return decode_review(orjson.dumps(review(pod, **kwargs))).request


def answer_for(pod: dict[str, Any], policy: Policy | None = None, **kwargs: Any) -> (
    tuple[dict[str, Any], Any]
):
    request = request_for(pod, **kwargs)
    decision = decide(request, policy or Policy())
    answer = {"response": decision.response(request["uid"])}
    return apply_answer(answer, copy.deepcopy(pod)), decision


def without_annotations(pod: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(pod)
    stripped["metadata"].pop("annotations", None)
    return stripped


@pytest.mark.parametrize(
    ("pod", "kind"),
    [
        (virt_v2v_pod(), PodKind.VIRT_V2V),
        (inspection_pod(), PodKind.INSPECTION),
        (cdi_importer_pod(), PodKind.CDI_IMPORTER),
    ],
    ids=["virt-v2v", "inspection", "cdi-importer"],
)
def test_migration_pods_lose_the_default_route_and_nothing_else(
    pod: dict[str, Any], kind: PodKind
) -> None:
    patched, decision = answer_for(pod)

    assert decision.outcome is Outcome.MUTATED
    assert decision.pod_kind is kind
    annotations = patched["metadata"]["annotations"]
    assert annotations[NETWORKS] == '[{"name":"transfer-l2","namespace":"openshift-mtv"}]'
    assert orjson.loads(annotations[REMOVED_ROUTES_ANNOTATION]) == [
        {"network": "openshift-mtv/transfer-l2", "default-route": ["192.168.50.1"]}
    ]
    assert without_annotations(patched) == without_annotations(pod)
    other = {k: v for k, v in annotations.items() if k not in (NETWORKS, REMOVED_ROUTES_ANNOTATION)}
    assert other == {k: v for k, v in pod["metadata"]["annotations"].items() if k != NETWORKS}


def test_the_audit_annotation_records_the_removed_gateways() -> None:
    _, decision = answer_for(virt_v2v_pod())

    assert set(decision.audit_annotations) == {AUDIT_ANNOTATION}
    assert "/" not in AUDIT_ANNOTATION
    assert len(AUDIT_ANNOTATION) <= 63
    assert orjson.loads(decision.audit_annotations[AUDIT_ANNOTATION]) == [
        {"network": "openshift-mtv/transfer-l2", "default-route": ["192.168.50.1"]}
    ]


def test_the_patch_escapes_the_slash_in_annotation_keys() -> None:
    _, decision = answer_for(virt_v2v_pod())

    assert decision.patch is not None
    paths = [operation["path"] for operation in orjson.loads(decision.patch)]
    assert paths == [
        "/metadata/annotations/k8s.v1.cni.cncf.io~1networks",
        "/metadata/annotations/gateway.yeet~1removed-default-routes",
    ]


def test_a_second_invocation_changes_nothing() -> None:
    once, _ = answer_for(virt_v2v_pod())

    twice, decision = answer_for(once)

    assert decision.outcome is Outcome.UNCHANGED
    assert decision.patch is None
    assert twice == once


@pytest.mark.parametrize(
    ("pod", "outcome"),
    [
        pytest.param(cdi_importer_pod(forklift=False), Outcome.IGNORED,
                     id="importer-outside-forklift"),
        pytest.param(unrelated_pod(), Outcome.IGNORED, id="unrelated-pod"),
        pytest.param(virt_v2v_pod(networks=None), Outcome.UNCHANGED, id="no-annotation"),
        pytest.param(virt_v2v_pod("openshift-mtv/transfer-l2@net1"), Outcome.UNCHANGED,
                     id="shorthand"),
        pytest.param(virt_v2v_pod('[{"name":"transfer-l2"}]'), Outcome.UNCHANGED,
                     id="no-default-route"),
    ],
)
def test_pods_with_nothing_to_do_are_allowed_without_a_patch(
    pod: dict[str, Any], outcome: Outcome
) -> None:
    patched, decision = answer_for(pod)

    assert decision.outcome is outcome
    assert decision.patch is None
    assert decision.warnings == ()
    assert patched == pod


def test_pods_without_an_annotations_map_are_allowed_unchanged() -> None:
    pod = virt_v2v_pod()
    del pod["metadata"]["annotations"]

    patched, decision = answer_for(pod)

    assert decision.outcome is Outcome.UNCHANGED
    assert patched == pod


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_creation_is_edited(operation: str) -> None:
    _, decision = answer_for(virt_v2v_pod(), operation=operation)

    assert decision.outcome is Outcome.IGNORED
    assert decision.patch is None


def test_other_kinds_are_ignored() -> None:
    document = review(virt_v2v_pod())
    document["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}

    decision = decide(decode_review(orjson.dumps(document)).request, Policy())

    assert decision.outcome is Outcome.IGNORED


def test_the_skip_annotation_opts_a_pod_out() -> None:
    pod = virt_v2v_pod()
    pod["metadata"]["annotations"][SKIP_ANNOTATION] = "True"

    patched, decision = answer_for(pod)

    assert decision.outcome is Outcome.OPTED_OUT
    assert patched == pod


@pytest.mark.parametrize(
    "networks",
    ['[{"name":"transfer-l2",', '{"name":"transfer-l2","default-route":["192.168.50.1"]}'],
    ids=["broken-json", "bare-object"],
)
def test_unparsable_annotations_are_left_alone_with_a_short_warning(networks: str) -> None:
    pod = virt_v2v_pod(networks)

    patched, decision = answer_for(pod)

    assert decision.outcome is Outcome.UNPARSABLE
    assert patched == pod
    assert len(decision.warnings) == 1
    assert len(decision.warnings[0]) < 120
    response = decision.response("uid")
    assert response["allowed"] is True


def test_a_very_long_reason_still_makes_a_short_warning() -> None:
    pod = virt_v2v_pod("[" + "x" * 5000)

    _, decision = answer_for(pod)

    assert len(decision.warnings[0]) < 120


def test_the_named_networks_policy_spares_other_networks() -> None:
    pod = virt_v2v_pod('[{"name":"transfer-l2","namespace":"openshift-mtv",'
                       '"default-route":["192.168.50.1"]}]')
    policy = Policy(only_networks=frozenset({"openshift-mtv/other"}))

    patched, decision = answer_for(pod, policy)

    assert decision.outcome is Outcome.UNCHANGED
    assert patched == pod


def test_generate_name_and_request_namespace_name_the_pod() -> None:
    pod = virt_v2v_pod()
    del pod["metadata"]["namespace"]
    request = request_for(pod)
    request["namespace"] = "vm-migrations"

    decision = decide(request, Policy())

    assert str(decision.pod) == "vm-migrations/warehouse-db-vm-2041-*"
    # An element without a namespace means the pod's namespace, taken from the request.
    pod2 = virt_v2v_pod('[{"name":"t","default-route":["1.1.1.1"]}]')
    del pod2["metadata"]["namespace"]
    request2 = request_for(pod2)
    request2["namespace"] = "vm-migrations"
    assert decide(request2, Policy()).removed[0].network == "vm-migrations/t"


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_the_patch_is_base64_json_patch(api_version: str) -> None:
    request = request_for(virt_v2v_pod(), api_version=api_version)

    response = decide(request, Policy()).response(request["uid"])

    assert response["patchType"] == "JSONPatch"
    assert isinstance(orjson.loads(base64.b64decode(response["patch"])), list)


def test_a_reinvocation_adds_to_the_record_of_the_first_call() -> None:
    once, _ = answer_for(virt_v2v_pod())
    networks = orjson.loads(once["metadata"]["annotations"][NETWORKS])
    networks.append({"name": "injected", "default-route": ["10.9.9.1"]})
    once["metadata"]["annotations"][NETWORKS] = orjson.dumps(networks).decode()

    twice, decision = answer_for(once)

    assert orjson.loads(twice["metadata"]["annotations"][REMOVED_ROUTES_ANNOTATION]) == [
        {"network": "openshift-mtv/transfer-l2", "default-route": ["192.168.50.1"]},
        {"network": "vm-migrations/injected", "default-route": ["10.9.9.1"]},
    ]
    # The audit log entry is per request: only what this call removed.
    assert orjson.loads(decision.audit_annotations[AUDIT_ANNOTATION]) == [
        {"network": "vm-migrations/injected", "default-route": ["10.9.9.1"]}
    ]


def test_a_broken_earlier_record_is_replaced() -> None:
    pod = virt_v2v_pod()
    pod["metadata"]["annotations"][REMOVED_ROUTES_ANNOTATION] = "{not json"

    patched, _ = answer_for(pod)

    assert len(orjson.loads(patched["metadata"]["annotations"][REMOVED_ROUTES_ANNOTATION])) == 1


def test_removed_gateways_are_recorded_exactly_as_they_were() -> None:
    pod = virt_v2v_pod('[{"name":"t","default-route":[123456789012345678901234567890,"é"]}]')

    patched, decision = answer_for(pod)

    assert decision.outcome is Outcome.MUTATED
    assert patched["metadata"]["annotations"][REMOVED_ROUTES_ANNOTATION] == (
        '[{"network":"vm-migrations/t","default-route":[123456789012345678901234567890,"é"]}]'
    )


def test_the_record_is_left_out_when_it_would_push_annotations_over_the_limit() -> None:
    element = '{"name":"transfer-l2","namespace":"openshift-mtv","default-route":["192.168.50.1"]}'
    pod = virt_v2v_pod("[" + ",".join([element] * 3000) + "]")
    assert len(pod["metadata"]["annotations"][NETWORKS]) < 256 * 1024

    patched, decision = answer_for(pod)

    annotations = patched["metadata"]["annotations"]
    assert "default-route" not in annotations[NETWORKS]
    assert REMOVED_ROUTES_ANNOTATION not in annotations
    assert sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) <= 256 * 1024
    assert "not written" in decision.warnings[0]
    assert len(decision.warnings[0]) < 120
