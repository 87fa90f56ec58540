"""The AdmissionReview wire format: decoding what kube-apiserver sends, encoding the answer.

kube-apiserver sends ``admission.k8s.io/v1`` or ``v1beta1`` and expects the answer in the
version it sent, holding only ``response``: the echoed ``uid``, ``allowed``, and, when the pod
changes, a base64 JSON Patch with ``patchType: JSONPatch`` (both or neither).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import msgspec
import orjson

SUPPORTED_API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class AdmissionRequest(TypedDict):
    """The fields of ``request`` this webhook reads; the API server sends more."""

    uid: str
    kind: GroupVersionKind
    resource: NotRequired[GroupVersionResource]
    subResource: NotRequired[str]
    namespace: NotRequired[str]
    name: NotRequired[str]
    operation: str
    object: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]


class Status(TypedDict):
    message: str


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    patchType: NotRequired[str]
    patch: NotRequired[str]
    warnings: NotRequired[list[str]]
    auditAnnotations: NotRequired[dict[str, str]]
    status: NotRequired[Status]


class BadReview(ValueError):
    """A body that is not an AdmissionReview this webhook can answer; the HTTP answer is 400."""


@dataclass(frozen=True, slots=True)
class Review:
    """A decoded AdmissionReview: the version to answer in, and its request."""

    api_version: str
    request: AdmissionRequest


class _PodHead(msgspec.Struct):
    metadata: Any = None


class _RequestHead(msgspec.Struct):
    uid: Any = None
    kind: Any = None
    operation: Any = None
    namespace: Any = None
    name: Any = None
    subResource: Any = None  # noqa: N815 - the wire name
    dryRun: Any = None  # noqa: N815 - the wire name
    object: _PodHead | None = None


class _ReviewHead(msgspec.Struct):
    apiVersion: Any = None  # noqa: N815 - the wire name
    kind: Any = None
    request: _RequestHead | None = None


# Only the fields the rule reads are decoded; the rest of the pod (its spec can run to
# megabytes) is skipped without building Python objects for it.
_HEAD_DECODER = msgspec.json.Decoder(_ReviewHead)


def _decode_head(body: bytes) -> dict[str, Any] | None:
    """The review's document reduced to what the rule reads; ``None`` if its shape is unusual."""
    try:
        head = _HEAD_DECODER.decode(body)
    except (msgspec.ValidationError, RecursionError):
        return None
    except msgspec.DecodeError as error:
        raise BadReview(f"body is not JSON: {error}") from None

    document: dict[str, Any] = {"apiVersion": head.apiVersion, "kind": head.kind}
    if head.request is not None:
        request = {
            field: value
            for field in _RequestHead.__struct_fields__
            if field != "object" and (value := getattr(head.request, field)) is not None
        }
        pod = head.request.object
        request["object"] = None if pod is None else {"metadata": pod.metadata}
        document["request"] = request
    return document


def decode_review(body: bytes) -> Review:
    """Decode an AdmissionReview, checking only what the answer depends on.

    The request's ``object`` keeps only ``metadata``: all the rule needs to read.
    """
    document = _decode_head(body)
    if document is None:
        # A shape the fast decoder refuses (an object that is not a JSON object, say) still
        # gets a considered answer from the general decoder.
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise BadReview(f"body is not JSON: {error}") from None
        except RecursionError:
            raise BadReview("body is nested too deeply to be an AdmissionReview") from None

    if not isinstance(document, dict):
        raise BadReview("body is not an AdmissionReview: expected a JSON object")
    if document.get("kind") != "AdmissionReview":
        kind = document.get("kind")
        raise BadReview(
            "body is not an AdmissionReview: "
            + ("it has no kind" if kind is None else f"kind is {kind!r}")
        )
    api_version = document.get("apiVersion")
    if api_version not in SUPPORTED_API_VERSIONS:
        raise BadReview(
            f"AdmissionReview apiVersion {api_version!r} is not one of "
            + ", ".join(SUPPORTED_API_VERSIONS)
        )

    request = document.get("request")
    if not isinstance(request, dict):
        raise BadReview("AdmissionReview has no request")
    if not isinstance(request.get("uid"), str) or not request["uid"]:
        raise BadReview("AdmissionReview request has no uid string")
    if not isinstance(request.get("kind"), dict):
        raise BadReview("AdmissionReview request has no kind")
    if not isinstance(request.get("operation"), str):
        raise BadReview("AdmissionReview request has no operation")

    return Review(api_version=api_version, request=request)  # type: ignore[arg-type]


def build_response(
    uid: str,
    *,
    patch: bytes | None = None,
    warnings: tuple[str, ...] = (),
    audit_annotations: Mapping[str, str] | None = None,
) -> AdmissionResponse:
    """Build an allowing response; this webhook never denies a pod."""
    response: AdmissionResponse = {"uid": uid, "allowed": True}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(patch).decode("ascii")
    if warnings:
        response["warnings"] = list(warnings)
    if audit_annotations:
        response["auditAnnotations"] = dict(audit_annotations)
    return response


def encode_review(api_version: str, response: AdmissionResponse) -> bytes:
    """Wrap a response in an AdmissionReview of the version the request came in."""
    return orjson.dumps(
        {"apiVersion": api_version, "kind": "AdmissionReview", "response": response}
    )
