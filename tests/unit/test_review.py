"""The AdmissionReview codec: what is a review, and the shape of the answer."""

from __future__ import annotations

import orjson
import pytest

from gateway_yeeter.review import BadReview, build_response, decode_review, encode_review
from tests.pods import review, virt_v2v_pod


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_answers_in_the_version_it_was_sent_with_only_a_response(api_version: str) -> None:
    decoded = decode_review(orjson.dumps(review(virt_v2v_pod(), api_version=api_version,
                                                uid="abc")))

    answer = orjson.loads(encode_review(decoded.api_version, build_response("abc")))

    assert answer == {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "response": {"uid": "abc", "allowed": True},
    }


def test_patch_and_patch_type_come_together() -> None:
    response = build_response("u", patch=b"[]")

    assert response["patchType"] == "JSONPatch"
    assert response["patch"] == "W10="
    assert "patch" not in build_response("u")
    assert "patchType" not in build_response("u")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"kind":"Pod"}', "kind is 'Pod'"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}', "apiVersion"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}', "no request"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}', "no uid"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
         b'"request":{"uid":"u","operation":"CREATE"}}', "no kind"),
        (b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1",'
         b'"request":{"uid":"u","kind":{}}}', "no operation"),
    ],
)
def test_bodies_that_are_not_reviews_are_refused_with_the_reason(
    body: bytes, message: str
) -> None:
    with pytest.raises(BadReview, match=message):
        decode_review(body)
