"""The annotation edit: default-route goes, everything else stays as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_yeeter.networks import (
    UnparsableNetworks,
    is_json_selection,
    remove_default_routes,
)

NAMESPACE = "vm-migrations"


def edit(annotation: str, **kwargs: Any) -> str | None:
    result = remove_default_routes(annotation, pod_namespace=NAMESPACE, **kwargs)
    return None if result is None else result.annotation


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        pytest.param(
            '[{"name":"transfer-l2","namespace":"openshift-mtv","default-route":["192.168.50.1"]}]',
            '[{"name":"transfer-l2","namespace":"openshift-mtv"}]',
            id="forklift-list",
        ),
        pytest.param('[{"name":"a","default-route":[]}]', '[{"name":"a"}]', id="empty-list"),
        pytest.param('[{"name":"a","default-route":"10.0.0.1"}]', '[{"name":"a"}]', id="string"),
        pytest.param('[{"name":"a","default-route":["gw"]}]', '[{"name":"a"}]', id="not-an-ip"),
        pytest.param('[{"name":"a","default-route":null}]', '[{"name":"a"}]', id="null"),
        pytest.param(
            '[{"name":"a","default-route":["10.0.0.1","fd00::1"]}]', '[{"name":"a"}]',
            id="dual-stack",
        ),
        pytest.param(
            '[{"default-route":["10.0.0.1"],"name":"a","interface":"net1","mac":"02:00:00:00:00:01",'
            '"ips":["10.0.0.5/24"],"cni-args":{"x":1},"com.example/extra":{"deep":[1,2]}}]',
            '[{"name":"a","interface":"net1","mac":"02:00:00:00:00:01","ips":["10.0.0.5/24"],'
            '"cni-args":{"x":1},"com.example/extra":{"deep":[1,2]}}]',
            id="every-other-key-kept-in-order",
        ),
        pytest.param(
            '[{"name":"a"},{"name":"b","default-route":["10.0.0.1"]},{"name":"c"}]',
            '[{"name":"a"},{"name":"b"},{"name":"c"}]',
            id="only-the-element-with-a-route-changes",
        ),
        pytest.param(
            '[ {"name" : "a",\n "default-route" : ["10.0.0.1"] } ]', '[{"name":"a"}]',
            id="written-compact",
        ),
        pytest.param(
            '[{"name":"réseau-ü","default-route":["10.0.0.1"],"note":"日本"}]',
            '[{"name":"réseau-ü","note":"日本"}]',
            id="non-ascii-kept-as-text",
        ),
        pytest.param(
            '[{"name":"a","default-route":["10.0.0.1"],"big":123456789012345678901234567890}]',
            '[{"name":"a","big":123456789012345678901234567890}]',
            id="big-integer-kept-exact",
        ),
        pytest.param(
            '[{"name":"a","Default-Route":["10.0.0.1"]}]', '[{"name":"a"}]',
            id="key-case-as-go-decodes-it",
        ),
        pytest.param(
            '[{"name":"a","default\\u002droute":["10.0.0.1"]}]', '[{"name":"a"}]',
            id="key-spelled-with-escapes",
        ),
        pytest.param(
            '[{"name":"a","default-route":["10.0.0.1"],"default-route":["10.0.0.2"]}]',
            '[{"name":"a"}]',
            id="duplicate-key",
        ),
        pytest.param('[{"name":"a"},"b",3,{"name":"c","default-route":[]}]',
                     '[{"name":"a"},"b",3,{"name":"c"}]', id="non-object-elements-kept"),
    ],
)
def test_removes_default_route_and_keeps_the_rest(annotation: str, expected: str) -> None:
    assert edit(annotation) == expected


@pytest.mark.parametrize(
    "annotation",
    [
        pytest.param("transfer-l2", id="shorthand-name"),
        pytest.param("openshift-mtv/transfer-l2@net1,other", id="shorthand-list"),
        pytest.param("", id="empty"),
        pytest.param('[{"name":"a"}]', id="no-route"),
        pytest.param("[]", id="empty-list"),
        pytest.param('[{"name":"default-route"}]', id="route-only-as-a-value"),
    ],
)
def test_leaves_selections_without_a_default_route_alone(annotation: str) -> None:
    assert edit(annotation) is None


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        pytest.param('[{"name":"a",', "not valid JSON", id="truncated"),
        pytest.param('{"name":"a","default-route":["10.0.0.1"]}', "a JSON object, not a list",
                     id="bare-object"),
        pytest.param('"default-route"', "a JSON string, not a list", id="string"),
        pytest.param('[{"name":"a","default-route":NaN}]', "NaN, which is not JSON", id="nan"),
        pytest.param('[{"name":"a","default-route":[],"f":1e999}]', "cannot be written back",
                     id="float-overflow"),
        pytest.param('[{"name":"a","default-route":[],"s":"\\ud800"}]', "cannot be written back",
                     id="lone-surrogate"),
        pytest.param('[{"x":' + "9" * 5000 + ',"default-route":[]}]', "number too long",
                     id="integer-too-long-to-convert"),
        pytest.param('[{"name":"a\x01"}]', "Invalid control character at character",
                     id="control-character"),
    ],
)
def test_refuses_json_multus_cannot_read_as_a_list(annotation: str, message: str) -> None:
    with pytest.raises(UnparsableNetworks, match=message) as raised:
        edit(annotation)

    assert len(str(raised.value)) < 120


def test_limits_the_edit_to_named_networks() -> None:
    annotation = (
        '[{"name":"transfer","default-route":["10.0.0.1"]},'
        '{"name":"storage","namespace":"infra","default-route":["10.1.0.1"]},'
        '{"name":"mgmt","namespace":"vm-migrations","default-route":["10.2.0.1"]}]'
    )

    result = remove_default_routes(
        annotation, pod_namespace=NAMESPACE,
        only_networks={"vm-migrations/transfer", "vm-migrations/mgmt"},
    )

    assert result is not None
    assert result.annotation == (
        '[{"name":"transfer"},{"name":"storage","namespace":"infra","default-route":["10.1.0.1"]},'
        '{"name":"mgmt","namespace":"vm-migrations"}]'
    )
    assert [(r.network, r.gateways) for r in result.removed] == [
        ("vm-migrations/transfer", ["10.0.0.1"]),
        ("vm-migrations/mgmt", ["10.2.0.1"]),
    ]


def test_named_networks_that_are_absent_change_nothing() -> None:
    assert edit('[{"name":"a","default-route":[]}]', only_networks={"other/a"}) is None


def test_reports_the_removed_gateways_per_network_with_the_pod_namespace_filled_in() -> None:
    result = remove_default_routes(
        '[{"name":"a","default-route":["10.0.0.1"]},{"name":"b","namespace":"x",'
        '"default-route":"fd00::1"}]',
        pod_namespace=NAMESPACE,
    )

    assert result is not None
    assert [(r.network, r.gateways) for r in result.removed] == [
        ("vm-migrations/a", ["10.0.0.1"]),
        ("x/b", "fd00::1"),
    ]


@pytest.mark.parametrize(
    ("annotation", "is_json"),
    [("a", False), ("ns/a@eth1", False), ("[]", True), ("{}", True), ('"a"', True)],
)
def test_json_is_recognised_by_the_characters_multus_looks_for(
    annotation: str, is_json: bool
) -> None:
    assert is_json_selection(annotation) is is_json


# Any JSON value Multus could meet inside an element, keys included.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
element_keys = st.sampled_from(
    ["name", "namespace", "ips", "mac", "interface", "cni-args", "portMappings", "bandwidth",
     "default-route", "ipam-claim-reference", "com.example/x", "日本"]
) | st.text(max_size=12)
elements = st.dictionaries(element_keys, json_values, max_size=8)
selections = st.lists(elements, max_size=6)


def _without_route(element: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in element.items() if key.lower() != "default-route"}


@given(selection=selections, indent=st.sampled_from([None, 2]), ascii_only=st.booleans())
def test_any_selection_loses_exactly_its_default_routes_in_order(
    selection: list[dict[str, Any]], indent: int | None, ascii_only: bool
) -> None:
    annotation = json.dumps(selection, indent=indent, ensure_ascii=ascii_only)

    result = edit(annotation)

    expected = [_without_route(element) for element in selection]
    if expected == selection:
        assert result is None
        return
    assert result is not None
    parsed = json.loads(result)
    assert parsed == expected
    assert result == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))
    assert [list(element) for element in parsed] == [list(element) for element in expected]
    assert edit(result) is None, "a second pass must change nothing"
