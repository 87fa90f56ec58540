"""The webhooks' matchConditions, evaluated with cel-python against Forklift-shaped pods.

The API server is the real judge (the e2e suite runs the same manifests against one); these
tests pin the intent: every pod the server would edit is sent, and pods it would leave alone
mostly are not.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_yeeter.admission import Outcome, Policy, decide
from tests.deploy.cel import Condition, condition_expression
from tests.deploy.manifests import Rendered
from tests.pods import FORKLIFT_NETWORKS, NETWORKS, cdi_importer_pod, review, virt_v2v_pod


@pytest.fixture(scope="module")
def condition(openshift: Rendered) -> Condition:
    return Condition(condition_expression(openshift))


def _with_networks(networks: str | None) -> dict[str, Any]:
    return virt_v2v_pod(networks)


def test_all_webhooks_share_one_condition(openshift: Rendered) -> None:
    for hook in openshift.configuration["webhooks"]:
        (only,) = hook["matchConditions"]
        assert only["name"] == "networks-may-carry-default-route"


def test_forklift_default_route_is_sent(condition: Condition) -> None:
    assert condition(_with_networks(FORKLIFT_NETWORKS))
    assert condition(cdi_importer_pod())


def test_pod_without_the_annotation_is_not_sent(condition: Condition) -> None:
    assert not condition(_with_networks(None))


def test_pod_without_any_annotations_is_not_sent(condition: Condition) -> None:
    pod = _with_networks(None)
    del pod["metadata"]["annotations"]

    assert not condition(pod)


def test_shorthand_which_cannot_carry_a_route_is_not_sent(condition: Condition) -> None:
    assert not condition(_with_networks("openshift-mtv/transfer-l2"))


def test_element_without_default_route_is_not_sent(condition: Condition) -> None:
    assert not condition(_with_networks('[{"name":"transfer-l2","namespace":"openshift-mtv"}]'))


def test_key_in_other_case_is_sent_because_multus_reads_it_the_same(
    condition: Condition,
) -> None:
    assert condition(_with_networks(FORKLIFT_NETWORKS.replace("default-route", "Default-Route")))


def test_key_spelt_with_json_escapes_is_sent(condition: Condition) -> None:
    escaped = FORKLIFT_NETWORKS.replace("default-route", "default\\u002droute")

    assert condition(_with_networks(escaped))


def test_similar_annotation_key_does_not_count(condition: Condition) -> None:
    pod = _with_networks(None)
    pod["metadata"]["annotations"]["v1.multus-cni.io/default-network"] = "openshift-mtv/x"
    pod["metadata"]["annotations"]["example.com/notes"] = "default-route"

    assert not condition(pod)


# The property that makes failurePolicy Fail safe to combine with the condition: the condition
# never hides a pod the server would have changed.

_KEY_SPELLINGS = st.sampled_from(["default-route", "Default-Route", "DEFAULT-ROUTE",
                                  "default-Route", "name", "namespace", "interface", "mac"])
_VALUES = st.one_of(
    st.lists(st.ip_addresses().map(str), max_size=2),
    st.text(max_size=8),
    st.none(),
)
_ELEMENTS = st.dictionaries(_KEY_SPELLINGS, _VALUES, max_size=4).map(
    lambda element: {"name": "transfer-l2", **element}
)


def _encode(selection: list[dict[str, Any]], escaped: set[int]) -> str:
    """Forklift's compact JSON, with the key characters at the given offsets as \\u escapes."""

    def key(text: str) -> str:
        spelt = (f"\\u{ord(c):04x}" if i in escaped else c for i, c in enumerate(text))
        return '"' + "".join(spelt) + '"'

    elements = (
        "{" + ",".join(f"{key(name)}:{json.dumps(value)}" for name, value in element.items())
        + "}"
        for element in selection
    )
    return "[" + ",".join(elements) + "]"


@settings(max_examples=150, deadline=None)
@given(
    selection=st.lists(_ELEMENTS, min_size=1, max_size=3),
    escaped=st.sets(st.integers(min_value=0, max_value=len("default-route") - 1), max_size=3),
)
def test_every_pod_the_server_would_edit_is_sent(
    condition: Condition, selection: list[dict[str, Any]], escaped: set[int]
) -> None:
    pod = _with_networks(_encode(selection, escaped))
    decision = decide(review(copy.deepcopy(pod))["request"], Policy())

    if decision.outcome is Outcome.MUTATED:
        assert condition(pod), pod["metadata"]["annotations"][NETWORKS]
