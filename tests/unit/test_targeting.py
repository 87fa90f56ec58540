"""Which pods are migration pods: label selectors and the default targets."""

from __future__ import annotations

import pytest

from gateway_yeeter.targeting import (
    DEFAULT_TARGETS,
    PodKind,
    SelectorError,
    Targets,
    parse_selector,
)
from tests.pods import cdi_importer_pod, inspection_pod, unrelated_pod, virt_v2v_pod


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("app=x", {"app": "x"}, True),
        ("app==x", {"app": "x"}, True),
        ("app=x", {"app": "y"}, False),
        ("app!=x", {"app": "y"}, True),
        ("app!=x", {}, True),
        ("app!=x", {"app": "x"}, False),
        ("plan", {"plan": ""}, True),
        ("plan", {}, False),
        ("!plan", {}, True),
        ("!plan", {"plan": "p"}, False),
        ("tier in (a, b)", {"tier": "b"}, True),
        ("tier in (a,b)", {"tier": "c"}, False),
        ("tier notin (a,b)", {"tier": "c"}, True),
        ("tier notin (a,b)", {}, True),
        ("app=x, cdi.kubevirt.io=importer,plan", {"app": "x", "cdi.kubevirt.io": "importer",
                                                  "plan": "p"}, True),
        ("app=x,plan", {"app": "x"}, False),
        ("forklift.konveyor.io/app=v", {"forklift.konveyor.io/app": "v"}, True),
    ],
)
def test_selectors_match_as_kubernetes_matches_them(
    selector: str, labels: dict[str, str], matches: bool
) -> None:
    assert parse_selector(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", ["", " ", "app=", "=x", "a b", "tier in ()", "app=x,,y",
                                      "tier in (a b)", "-app=x"])
def test_malformed_selectors_are_refused(selector: str) -> None:
    if selector == "app=":
        # An empty value is valid in Kubernetes: it matches a label set to "".
        assert parse_selector(selector).matches({"app": ""})
        return
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_selector_renders_as_an_object_selector() -> None:
    selector = parse_selector("app=containerized-data-importer,plan,!skip,tier in (a,b)")

    assert selector.to_kubernetes() == {
        "matchLabels": {"app": "containerized-data-importer"},
        "matchExpressions": [
            {"key": "plan", "operator": "Exists"},
            {"key": "skip", "operator": "DoesNotExist"},
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
        ],
    }


@pytest.mark.parametrize(
    ("labels", "kind"),
    [
        (virt_v2v_pod()["metadata"]["labels"], PodKind.VIRT_V2V),
        (inspection_pod()["metadata"]["labels"], PodKind.INSPECTION),
        (cdi_importer_pod()["metadata"]["labels"], PodKind.CDI_IMPORTER),
        (cdi_importer_pod(forklift=False)["metadata"]["labels"], None),
        (unrelated_pod()["metadata"]["labels"], None),
        ({"app": "containerized-data-importer", "cdi.kubevirt.io": "cdi-upload-server",
          "plan": "p"}, None),
        ({}, None),
    ],
)
def test_default_targets_are_forklift_migration_pods(
    labels: dict[str, str], kind: PodKind | None
) -> None:
    assert DEFAULT_TARGETS.classify(labels) is kind


def test_every_cdi_importer_option_takes_importers_outside_forklift() -> None:
    targets = Targets.from_text(every_cdi_importer=True)

    labels = cdi_importer_pod(forklift=False)["metadata"]["labels"]
    assert targets.classify(labels) is PodKind.CDI_IMPORTER


def test_selectors_can_be_replaced_per_pod_kind() -> None:
    targets = Targets.from_text({PodKind.VIRT_V2V: "forklift.app=virt-v2v,team=storage"})

    assert targets.classify(virt_v2v_pod()["metadata"]["labels"]) is None
    assert targets.classify(virt_v2v_pod(team="storage")["metadata"]["labels"]) is PodKind.VIRT_V2V
