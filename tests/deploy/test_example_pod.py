"""examples/virt-v2v-pod.yaml, the pod deploy/README.md verifies an installation with."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import orjson
import yaml

from gateway_yeeter.admission import REMOVED_ROUTES_ANNOTATION, Outcome, Policy, decide
from gateway_yeeter.review import encode_review
from gateway_yeeter.targeting import DEFAULT_TARGETS, PodKind
from tests.deploy.cel import Condition
from tests.deploy.manifests import REPO_ROOT, Rendered
from tests.pods import review
from tests.webhook import apply_answer

EXAMPLE = REPO_ROOT / "examples" / "virt-v2v-pod.yaml"


def _example() -> dict[str, Any]:
    pod = yaml.safe_load(EXAMPLE.read_text())
    assert isinstance(pod, dict)
    return pod


def test_example_is_a_valid_pod_without_a_namespace_of_its_own() -> None:
    pod = _example()

    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    # So that `oc create` puts it in the current project, wherever the admin may create pods.
    assert "namespace" not in pod["metadata"]


def test_example_reaches_the_virt_v2v_webhook(openshift: Rendered) -> None:
    pod = _example()
    hook = openshift.webhook("virt-v2v.gateway.yeet")
    (condition,) = hook["matchConditions"]

    assert DEFAULT_TARGETS.classify(pod["metadata"]["labels"]) is PodKind.VIRT_V2V
    assert hook["objectSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert Condition(condition["expression"])(pod)


def test_example_comes_back_without_its_default_route() -> None:
    pod = _example()
    request = review(pod)["request"]
    decision = decide(request, Policy())
    answer = orjson.loads(encode_review("admission.k8s.io/v1", decision.response(request["uid"])))

    edited = apply_answer(answer, pod)

    assert decision.outcome is Outcome.MUTATED
    annotations = edited["metadata"]["annotations"]
    assert "default-route" not in annotations["k8s.v1.cni.cncf.io/networks"]
    assert REMOVED_ROUTES_ANNOTATION in annotations

