"""The admission rule: one AdmissionRequest in, one decision out, with no I/O.

A decision never denies a pod. Either the pod is left as it is, or it gets a JSON Patch that
replaces its networks annotation with the edited one and records what was removed.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from gateway_yeeter.networks import (
    NETWORKS_ANNOTATION,
    RemovedRoute,
    UnparsableNetworks,
    encode_json,
    remove_default_routes,
)
from gateway_yeeter.review import AdmissionRequest, AdmissionResponse, build_response
from gateway_yeeter.targeting import DEFAULT_TARGETS, PodKind, Targets

ANNOTATION_PREFIX = "gateway.yeet/"
SKIP_ANNOTATION = ANNOTATION_PREFIX + "skip"
"""Set to ``"true"`` on a pod (or its DataVolume, for CDI importers) to keep its route."""

REMOVED_ROUTES_ANNOTATION = ANNOTATION_PREFIX + "removed-default-routes"
"""Written on every edited pod: which gateways were removed from which network."""

AUDIT_ANNOTATION = "removed-default-routes"
"""The ``auditAnnotations`` key; the API server prefixes it with the webhook's name."""

# kube-apiserver drops warnings longer than this.
WARNING_LIMIT = 120

# kube-apiserver refuses objects whose annotations, keys and values, total more than this.
ANNOTATIONS_LIMIT = 256 * 1024


class Outcome(StrEnum):
    """What the webhook did with a request, as logged and counted."""

    MUTATED = "mutated"
    UNCHANGED = "unchanged"
    IGNORED = "ignored"
    OPTED_OUT = "opted-out"
    UNPARSABLE = "unparsable"


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings of the rule: which pods are targets, and which networks lose their route."""

    targets: Targets = DEFAULT_TARGETS
    only_networks: frozenset[str] | None = None
    """``namespace/name`` of the networks to edit; ``None`` edits every network."""


@dataclass(frozen=True, slots=True)
class PodReference:
    """How a log line names the pod: it may have only a ``generateName`` on CREATE."""

    namespace: str
    name: str
    generate_name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name or self.generate_name + '*'}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one admission request, and the facts its log line reports."""

    outcome: Outcome
    reason: str
    pod: PodReference
    pod_kind: PodKind | None = None
    patch: bytes | None = None
    removed: tuple[RemovedRoute, ...] = ()
    warnings: tuple[str, ...] = ()
    audit_annotations: Mapping[str, str] = field(default_factory=dict)

    def response(self, uid: str) -> AdmissionResponse:
        return build_response(
            uid,
            patch=self.patch,
            warnings=self.warnings,
            audit_annotations=self.audit_annotations,
        )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _pod_reference(request: AdmissionRequest, metadata: Mapping[str, Any]) -> PodReference:
    return PodReference(
        namespace=str(request.get("namespace") or metadata.get("namespace") or ""),
        name=str(metadata.get("name") or request.get("name") or ""),
        generate_name=str(metadata.get("generateName") or ""),
    )


def _is_pod_create(request: AdmissionRequest) -> bool:
    kind = _mapping(request.get("kind"))
    return (
        request.get("operation") == "CREATE"
        and kind.get("kind") == "Pod"
        and kind.get("group", "") == ""
        and not request.get("subResource")
    )


def _escape_pointer(key: str) -> str:
    # RFC 6901: "~" first, so the "~" that escapes "/" is not escaped again.
    return key.replace("~", "~0").replace("/", "~1")


def _truncate_warning(text: str) -> str:
    text = f"gateway-yeeter: {text}"
    return text if len(text) < WARNING_LIMIT else text[: WARNING_LIMIT - 2] + "…"


def _record_entries(removed: Collection[RemovedRoute]) -> list[dict[str, Any]]:
    return [{"network": route.network, "default-route": route.gateways} for route in removed]


def _earlier_record(value: Any) -> list[Any]:
    # With reinvocationPolicy IfNeeded a second call edits a pod the first call already edited;
    # its record must keep what the first call removed.
    if not isinstance(value, str):
        return []
    try:
        earlier = json.loads(value)
    except (ValueError, RecursionError):
        return []
    return earlier if isinstance(earlier, list) else []


def build_patch(networks: str, record: str | None) -> bytes:
    """The JSON Patch for an edited pod, which already has an annotations map to patch into."""
    annotations = "/metadata/annotations/"
    operations = [
        {"op": "replace", "path": annotations + _escape_pointer(NETWORKS_ANNOTATION),
         "value": networks},
    ]
    if record is not None:
        operations.append(
            {"op": "add", "path": annotations + _escape_pointer(REMOVED_ROUTES_ANNOTATION),
             "value": record}
        )
    return orjson.dumps(operations)


def _annotations_size(annotations: Mapping[str, Any], changes: Mapping[str, str]) -> int:
    # The API server counts the bytes of every key and value, as the pod will hold them.
    merged = {**annotations, **changes}
    return sum(len(key.encode()) + len(str(value).encode()) for key, value in merged.items())


def decide(request: AdmissionRequest, policy: Policy) -> Decision:
    """Decide what to do with one admission request for a pod."""
    pod = request.get("object")
    metadata = _mapping(_mapping(pod).get("metadata"))
    reference = _pod_reference(request, metadata)

    if not _is_pod_create(request):
        return Decision(Outcome.IGNORED, "not the creation of a pod", reference)

    labels = _mapping(metadata.get("labels"))
    pod_kind = policy.targets.classify(labels)
    if pod_kind is None:
        return Decision(Outcome.IGNORED, "labels match no migration pod selector", reference)

    annotations = _mapping(metadata.get("annotations"))
    if str(annotations.get(SKIP_ANNOTATION, "")).lower() == "true":
        return Decision(Outcome.OPTED_OUT, f"pod is annotated {SKIP_ANNOTATION}=true",
                        reference, pod_kind)

    networks = annotations.get(NETWORKS_ANNOTATION)
    if not isinstance(networks, str):
        return Decision(Outcome.UNCHANGED, f"no {NETWORKS_ANNOTATION} annotation",
                        reference, pod_kind)

    # An edit that fails to parse leaves the pod as it is: refusing the pod would stop the
    # migration, while Multus reports a broken annotation clearly enough on its own.
    try:
        edit = remove_default_routes(
            networks, pod_namespace=reference.namespace, only_networks=policy.only_networks
        )
        if edit is None:
            return Decision(Outcome.UNCHANGED, "no default-route to remove", reference, pod_kind)
        removed = _record_entries(edit.removed)
        audit = encode_json(removed)
        record: str | None = encode_json(
            _earlier_record(annotations.get(REMOVED_ROUTES_ANNOTATION)) + removed
        )
    except UnparsableNetworks as error:
        return Decision(Outcome.UNPARSABLE, str(error), reference, pod_kind,
                        warnings=(_truncate_warning(f"{error}; left unchanged"),))

    # The record must not be what pushes the pod over the API server's annotation limit: the
    # pod would be refused, while without the record it is created with its route removed.
    warnings: tuple[str, ...] = ()
    changes = {NETWORKS_ANNOTATION: edit.annotation, REMOVED_ROUTES_ANNOTATION: record or ""}
    if _annotations_size(annotations, changes) > ANNOTATIONS_LIMIT:
        record = None
        warnings = (_truncate_warning(
            f"{REMOVED_ROUTES_ANNOTATION} not written: annotations would exceed 256 KiB"),)

    return Decision(
        Outcome.MUTATED,
        "removed default-route",
        reference,
        pod_kind,
        patch=build_patch(edit.annotation, record),
        removed=edit.removed,
        warnings=warnings,
        audit_annotations={AUDIT_ANNOTATION: audit},
    )
