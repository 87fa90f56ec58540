"""Generated and mutated reviews and annotations, against the running server and the rule.

Whatever arrives, the webhook answers 200 or, for a body that is no AdmissionReview, 400; every
patch it sends applies to the object as it was sent, and an annotation Multus could read before
the edit is one it can still read after it, with no default route left in any spelling.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonpatch
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_yeeter.admission import Outcome, Policy, decide
from gateway_yeeter.networks import (
    DEFAULT_ROUTE_KEY,
    NETWORKS_ANNOTATION,
    UnparsableNetworks,
    remove_default_routes,
)
from gateway_yeeter.review import SUPPORTED_API_VERSIONS
from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.pods import cdi_importer_pod, inspection_pod, review, unrelated_pod, virt_v2v_pod
from tests.webhook import apiserver_client, post_review

SERVER_EXAMPLES = 300
BAD_BODY_EXAMPLES = 150
RULE_EXAMPLES = 200
EDIT_EXAMPLES = 400
# Each direct example is also tried in this many character-level variants.
MUTANTS_PER_EXAMPLE = 25

# --- A model of what Multus reads -------------------------------------------------------------

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

# The NetworkSelectionElement fields Multus decodes, and the JSON type each one needs.
_FIELD_TYPES: dict[str, Callable[[Any], bool]] = {
    "name": lambda value: isinstance(value, str),
    "namespace": lambda value: isinstance(value, str),
    "interface": lambda value: isinstance(value, str),
    "mac": lambda value: isinstance(value, str),
    "infiniband-guid": lambda value: isinstance(value, str),
    "ipam-claim-reference": lambda value: isinstance(value, str),
    "ips": lambda value: isinstance(value, list) and all(isinstance(i, str) for i in value),
    DEFAULT_ROUTE_KEY: lambda value: isinstance(value, list)
    and all(isinstance(gateway, str) for gateway in value),
    "portMappings": lambda value: isinstance(value, list)
    and all(isinstance(mapping, dict) for mapping in value),
    "bandwidth": lambda value: isinstance(value, dict),
    "cni-args": lambda value: isinstance(value, dict),
}
_FIELDS_BY_FOLDED_NAME = {name.lower(): name for name in _FIELD_TYPES}


def _reject_constant(constant: str) -> Any:
    raise ValueError(constant)


def _finite_float(text: str) -> float:
    # Go refuses a number that overflows float64 rather than reading it as infinity.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def multus_fields(element: Any) -> dict[str, Any] | None:
    """The fields Go's decoder fills from one element, or None when decoding fails.

    Go matches object keys to fields regardless of ASCII case, and a later key wins.
    """
    if not isinstance(element, dict):
        return None
    fields: dict[str, Any] = {}
    for key, value in element.items():
        field = _FIELDS_BY_FOLDED_NAME.get(key.lower())
        if field is None:
            continue
        if value is not None and not _FIELD_TYPES[field](value):
            return None
        fields[field] = value
    name = fields.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
        return None
    return fields


def multus_reads(annotation: str) -> list[dict[str, Any]] | None:
    """The elements Multus would take from a JSON annotation, or None when it would refuse."""
    try:
        selection = json.loads(
            annotation, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except ValueError:
        return None
    if not isinstance(selection, list):
        return None
    elements = [multus_fields(element) for element in selection]
    if any(fields is None for fields in elements):
        return None
    return elements  # type: ignore[return-value]


def has_route_key(element: Any) -> bool:
    return isinstance(element, dict) and any(
        key.lower() == DEFAULT_ROUTE_KEY for key in element
    )


def has_lone_surrogate(annotation: str) -> bool:
    try:
        json.dumps(json.loads(annotation), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def assert_edit_is_sound(before: str, after: str) -> None:
    """The edited annotation keeps every element Multus read, minus its default route."""
    read_before = multus_reads(before)
    assert not any(has_route_key(element) for element in json.loads(after))
    if read_before is None:
        return
    read_after = multus_reads(after)
    assert read_after is not None, f"Multus could read {before!r} but not {after!r}"
    expected = [
        {field: value for field, value in fields.items() if field != DEFAULT_ROUTE_KEY}
        for fields in read_before
    ]
    assert read_after == expected


# --- Annotations ----------------------------------------------------------------------------

# 64-bit integers only: larger ones in a default-route value are a known fault of the rule,
# pinned separately below, and would hide anything else the fuzzing finds.
json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_NAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789-."
network_names = st.sampled_from(["transfer-l2", "openshift-mtv", "vm-migrations", "a"]) | st.text(
    _NAME_CHARACTERS, min_size=1, max_size=16
).map(lambda text: f"n{text}0")
gateways = st.sampled_from(["192.168.50.1", "10.0.0.1", "fd00::1", "169.254.0.1"]) | st.builds(
    "{}.{}.{}.{}".format, *[st.integers(0, 255)] * 4
)


@st.composite
def route_keys(draw: st.DrawFn) -> str:
    """``default-route`` in any ASCII case, as Go's decoder would still take it."""
    flips = draw(st.lists(st.booleans(), min_size=len(DEFAULT_ROUTE_KEY),
                          max_size=len(DEFAULT_ROUTE_KEY)))
    return "".join(
        letter.upper() if flip else letter for letter, flip in zip(DEFAULT_ROUTE_KEY, flips,
                                                                   strict=True)
    )


@st.composite
def network_selection_elements(draw: st.DrawFn) -> dict[str, Any]:
    """An element Multus reads, with its keys in any order."""
    entries: list[tuple[str, Any]] = [("name", draw(network_names))]
    optional: list[tuple[str, st.SearchStrategy[Any]]] = [
        ("namespace", network_names),
        ("interface", st.integers(0, 99).map("net{}".format)),
        ("mac", st.just("02:00:00:00:00:01")),
        ("ips", st.lists(gateways.map(lambda ip: ip + "/24"), max_size=2)),
        ("cni-args", st.dictionaries(st.text(max_size=6), json_values, max_size=2)),
        ("bandwidth", st.fixed_dictionaries({"ingressRate": st.integers(0, 10**9)})),
        ("portMappings", st.lists(st.fixed_dictionaries(
            {"hostPort": st.integers(1, 65535), "containerPort": st.integers(1, 65535)}),
            max_size=2)),
        ("com.example/extra", json_values),
    ]
    for key, values in optional:
        if draw(st.booleans()):
            entries.append((key, draw(values)))
    if draw(st.integers(0, 3)):
        entries.append((draw(route_keys()), draw(st.lists(gateways, max_size=2))))
    return dict(draw(st.permutations(entries)))


def written(selection: list[Any], style: int) -> str:
    """A selection as the writers seen in clusters format it."""
    if style == 0:
        return json.dumps(selection, separators=(",", ":"))
    if style == 1:
        return json.dumps(selection, indent=2, ensure_ascii=False)
    return json.dumps(selection)


readable_annotations = st.builds(
    written, st.lists(network_selection_elements(), min_size=1, max_size=4), st.integers(0, 2)
)


@st.composite
def mutated_annotations(draw: st.DrawFn) -> str:
    """A readable annotation broken in one of the ways hands and tools break them."""
    text = draw(readable_annotations)
    position = draw(st.integers(0, len(text)))
    mutation = draw(st.integers(0, 8))
    if mutation == 0:
        return text[:position]
    if mutation == 1:
        return text[:position] + draw(st.sampled_from('[]{}",:\\ x0')) + text[position:]
    if mutation == 2:
        return text[:position] + text[position + 1:]
    if mutation == 3:
        return json.dumps(json.loads(text)[0])
    if mutation == 4:
        return json.dumps(text)
    if mutation == 5:
        return ",".join(f"{ns}/{name}@net1" for ns, name in draw(
            st.lists(st.tuples(network_names, network_names), min_size=1, max_size=3)))
    if mutation == 6:
        selection = json.loads(text)
        selection.insert(draw(st.integers(0, len(selection))), draw(json_values))
        return json.dumps(selection)
    if mutation == 7:
        return text.replace("]", ", NaN]", 1)
    return draw(st.text(max_size=40))


any_annotations = readable_annotations | mutated_annotations()


# --- Pods and reviews -----------------------------------------------------------------------

def unrelated_pod_with(networks: str) -> dict[str, Any]:
    pod = unrelated_pod()
    pod["metadata"]["annotations"][NETWORKS_ANNOTATION] = networks
    return pod


def foreign_importer_pod(networks: str) -> dict[str, Any]:
    return cdi_importer_pod(networks, forklift=False)


# Mostly the pods the webhook edits: the others take one early return.
pod_makers = st.sampled_from([
    virt_v2v_pod, virt_v2v_pod, inspection_pod, cdi_importer_pod, cdi_importer_pod,
    foreign_importer_pod, unrelated_pod_with,
])


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    networks = draw(st.one_of(readable_annotations, readable_annotations, mutated_annotations()))
    pod: dict[str, Any] = draw(pod_makers)(networks)
    metadata = pod["metadata"]
    change = draw(st.integers(0, 9))
    if change == 0:
        metadata["annotations"]["gateway.yeet/skip"] = draw(st.sampled_from(["true", "True",
                                                                              "false", ""]))
    elif change == 1:
        del metadata["annotations"]
    elif change == 2:
        metadata["annotations"] = draw(st.sampled_from([None, [], "text", 5]))
    elif change == 3:
        metadata["labels"] = draw(st.sampled_from([None, [], "forklift.app=virt-v2v"]))
    elif change == 4:
        metadata["annotations"][NETWORKS_ANNOTATION] = draw(json_values)
    elif change == 5:
        metadata["annotations"]["example.com/other"] = draw(st.text(max_size=200))
    return pod


@st.composite
def reviews(draw: st.DrawFn) -> dict[str, Any]:
    """A review as kube-apiserver sends it, sometimes with a field removed or replaced."""
    document = review(
        draw(pods()),
        api_version=draw(st.sampled_from(SUPPORTED_API_VERSIONS)),
        operation=draw(st.sampled_from(["CREATE"] * 7 + ["UPDATE", "DELETE", "CONNECT"])),
    )
    request = document["request"]
    if draw(st.integers(0, 5)) == 0:
        victim = draw(st.sampled_from(sorted(request)))
        if draw(st.booleans()):
            del request[victim]
        else:
            request[victim] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        document[draw(st.sampled_from(["apiVersion", "kind"]))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        request["dryRun"] = True
    return document


def answerable(document: dict[str, Any]) -> bool:
    """Whether the webhook owes this document a 200: what kube-apiserver always sends."""
    request = document.get("request")
    return (
        document.get("kind") == "AdmissionReview"
        and document.get("apiVersion") in SUPPORTED_API_VERSIONS
        and isinstance(request, dict)
        and isinstance(request.get("uid"), str) and bool(request["uid"])
        and isinstance(request.get("kind"), dict)
        and isinstance(request.get("operation"), str)
    )


def check_answer(document: dict[str, Any], answer: dict[str, Any]) -> None:
    """The answer echoes the review and carries a patch that applies to the object as sent."""
    assert answer["apiVersion"] == document["apiVersion"]
    assert answer["kind"] == "AdmissionReview"
    assert set(answer) == {"apiVersion", "kind", "response"}
    response = answer["response"]
    assert response["uid"] == document["request"]["uid"]
    assert response["allowed"] is True
    assert ("patch" in response) == ("patchType" in response)
    for warning in response.get("warnings", []):
        assert len(warning) < 120
    if "patch" not in response:
        return

    assert response["patchType"] == "JSONPatch"
    operations = orjson.loads(base64.b64decode(response["patch"], validate=True))
    sent_object = document["request"]["object"]
    patched = jsonpatch.JsonPatch(operations).apply(copy.deepcopy(sent_object))
    before = sent_object["metadata"]["annotations"][NETWORKS_ANNOTATION]
    after = patched["metadata"]["annotations"][NETWORKS_ANNOTATION]
    assert_edit_is_sound(before, after)


# --- Against the running server -------------------------------------------------------------

# One server answers every example; that a fixture outlives the examples is the point.
SERVER_SETTINGS = settings(
    max_examples=SERVER_EXAMPLES, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def webhook_client(start_webhook: StartWebhook, authority: Authority) -> Iterator[httpx.Client]:
    process = start_webhook()
    with apiserver_client(process.url, authority.ca_file) as client:
        yield client
    assert "admission rule failed" not in process.log(), "the rule raised during fuzzing"
    assert "Traceback" not in process.log()


@SERVER_SETTINGS
@given(document=reviews())
def test_generated_reviews_get_an_answer_whose_patch_applies(
    webhook_client: httpx.Client, document: dict[str, Any]
) -> None:
    response = post_review(webhook_client, orjson.dumps(document))

    if not answerable(document):
        assert response.status_code == 400
        return
    assert response.status_code == 200, response.text
    check_answer(document, response.json())


non_reviews = (
    st.binary(max_size=300)
    | json_values.map(orjson.dumps)
    | st.builds(lambda extra: orjson.dumps({"apiVersion": "admission.k8s.io/v1",
                                           "kind": "AdmissionReview", **extra}),
                st.dictionaries(st.sampled_from(["response", "spec", "Request"]), json_values))
    | st.builds(lambda request: orjson.dumps({"apiVersion": "admission.k8s.io/v1",
                                             "kind": "AdmissionReview", "request": request}),
                json_values.filter(lambda value: not isinstance(value, dict)))
)


@settings(SERVER_SETTINGS, max_examples=BAD_BODY_EXAMPLES)
@given(body=non_reviews)
def test_bodies_that_are_no_review_get_400_never_5xx(
    webhook_client: httpx.Client, body: bytes
) -> None:
    response = post_review(webhook_client, body)

    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe{}", b"[]", b'"AdmissionReview"', b"null",
     b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}',
     b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":null}',
     b'{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{}}',
     b'{"kind":"AdmissionReview","apiVersion":"v1","request":{"uid":"u"}}',
     b"[" * 5000 + b"]" * 5000],
    ids=["empty", "truncated", "bad-utf8", "list", "string", "null", "no-request",
         "null-request", "empty-request", "wrong-version", "nested-too-deep"],
)
def test_each_kind_of_bad_body_gets_400(webhook_client: httpx.Client, body: bytes) -> None:
    assert post_review(webhook_client, body).status_code == 400


# --- Against the rule directly --------------------------------------------------------------


def mutants(text: str, rng: random.Random, count: int) -> Iterator[str]:
    """Character-level variants of an annotation: cut, spliced, or with characters changed.

    Hypothesis draws the structure and the seed; these cheap variants multiply each example.
    """
    for _ in range(count):
        position = rng.randrange(len(text) + 1)
        end = min(len(text), position + rng.randrange(1, 12))
        operation = rng.randrange(7)
        if operation == 0:
            yield text[:position]
        elif operation == 1:
            yield text[:position] + text[position + 1:]
        elif operation == 2:
            yield text[:position] + rng.choice(MUTATION_CHARACTERS) + text[position:]
        elif operation == 3:
            yield text[:position] + rng.choice(MUTATION_CHARACTERS) + text[position + 1:]
        elif operation == 4:
            yield text[:end] + text[position:]
        elif operation == 5:
            yield text[:position] + text[position:end].swapcase() + text[end:]
        else:
            yield text[:position] + " \n\t" + text[position:]


MUTATION_CHARACTERS = '[]{}",:\\ 0123456789aeEnul-.+'


@settings(max_examples=RULE_EXAMPLES, deadline=None)
@given(document=reviews().filter(answerable), rng=st.randoms(use_true_random=False))
def test_the_rule_decides_every_review_with_a_patch_that_applies(
    document: dict[str, Any], rng: random.Random
) -> None:
    request = document["request"]
    pod_annotations = _annotations_of(request)
    variants: list[str | None] = [None]
    if pod_annotations is not None and isinstance(pod_annotations.get(NETWORKS_ANNOTATION), str):
        variants += mutants(pod_annotations[NETWORKS_ANNOTATION], rng, MUTANTS_PER_EXAMPLE)

    for variant in variants:
        if variant is not None and pod_annotations is not None:
            pod_annotations[NETWORKS_ANNOTATION] = variant
        sent_object = copy.deepcopy(request.get("object"))

        decision = decide(request, Policy())

        assert request.get("object") == sent_object, "the rule changed the object it was given"
        if decision.patch is None:
            continue
        assert decision.outcome is Outcome.MUTATED
        answer = {"apiVersion": document["apiVersion"], "kind": "AdmissionReview",
                  "response": decision.response(request["uid"])}
        check_answer(document, orjson.loads(orjson.dumps(answer)))


def _annotations_of(request: dict[str, Any]) -> dict[str, Any] | None:
    pod = request.get("object")
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    found = metadata.get("annotations") if isinstance(metadata, dict) else None
    return found if isinstance(found, dict) else None


def check_edit(annotation: str, pod_namespace: str) -> None:
    try:
        edit = remove_default_routes(annotation, pod_namespace=pod_namespace)
    except UnparsableNetworks:
        # Go reads a lone surrogate escape as U+FFFD; the edit refuses to write such text back
        # rather than change it, and leaves the annotation alone.
        assert multus_reads(annotation) is None or has_lone_surrogate(annotation)
        return
    if edit is None:
        read = multus_reads(annotation)
        assert read is None or not any(DEFAULT_ROUTE_KEY in fields for fields in read)
        return

    assert_edit_is_sound(annotation, edit.annotation)
    assert remove_default_routes(edit.annotation, pod_namespace=pod_namespace) is None
    assert all(route.network.count("/") == 1 for route in edit.removed)


@settings(max_examples=EDIT_EXAMPLES, deadline=None)
@given(annotation=any_annotations, pod_namespace=network_names,
       rng=st.randoms(use_true_random=False))
def test_every_edit_leaves_an_annotation_multus_reads_without_a_default_route(
    annotation: str, pod_namespace: str, rng: random.Random
) -> None:
    check_edit(annotation, pod_namespace)
    for variant in mutants(annotation, rng, MUTANTS_PER_EXAMPLE):
        check_edit(variant, pod_namespace)


@pytest.mark.parametrize(
    "networks",
    ['[{"name":"a","default-route":[123456789012345678901234567890]}]',
     '[{"name":"a","default-route":["\\ud800"]}]'],
    ids=["big-integer", "lone-surrogate"],
)
def test_a_default_route_the_record_cannot_hold_is_decided_without_raising(
    networks: str,
) -> None:
    decide(review(virt_v2v_pod(networks))["request"], Policy())


def test_an_annotation_nested_too_deep_for_the_parser_is_unparsable() -> None:
    with pytest.raises(UnparsableNetworks):
        remove_default_routes("[" * 5000 + "]" * 5000, pod_namespace="vm-migrations")
