"""Every variant of deploy/ renders, and every object in it is one the API server would accept."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from gateway_yeeter.config import parse_duration
from tests.deploy.conftest import RenderPath, RenderVariant
from tests.deploy.manifests import ENTRY_POINTS, NAME, NAMESPACE, Manifest, Rendered

# matchConditions are GA from 1.30 on; the variants without them serve the releases before.
MATCH_CONDITIONS_VERSIONS = ("1.30.0", "1.34.0")
OLDER_VERSIONS = ("1.27.0", "1.29.0")

# Kinds of CRDs (cert-manager, Prometheus Operator) that kubernetes_validate has no schema for.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}

LABELS = {
    "app": NAME,
    "app.kubernetes.io/name": NAME,
    "app.kubernetes.io/component": "admission-webhook",
}
CLUSTER_SCOPED_KINDS = {"MutatingWebhookConfiguration"}


def _versions(rendered: Rendered) -> tuple[str, ...]:
    return MATCH_CONDITIONS_VERSIONS if rendered.variant.match_conditions else OLDER_VERSIONS


@pytest.mark.parametrize("path", sorted(ENTRY_POINTS))
def test_entry_point_renders_exactly_the_components_it_names(
    path: str, render_path: RenderPath, render_variant: RenderVariant
) -> None:
    assert render_path(path) == render_variant(ENTRY_POINTS[path]).objects


def test_every_built_in_object_passes_the_kubernetes_schema(rendered: Rendered) -> None:
    custom = []
    for version in _versions(rendered):
        for item in rendered.objects:
            key = (item["apiVersion"], item["kind"])
            if key in CUSTOM_KINDS:
                custom.append(key)
                continue
            try:
                kubernetes_validate.validate(item, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{item['kind']}/{item['metadata']['name']} is not valid for "
                            f"Kubernetes {version}: {error.message} at {list(error.path)}")

    assert set(custom) <= CUSTOM_KINDS


def test_schema_validation_refuses_a_misspelt_field(openshift: Rendered) -> None:
    # The check above is only worth something if strict validation notices a typo.
    deployment = copy.deepcopy(openshift.deployment)
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, MATCH_CONDITIONS_VERSIONS[0], strict=True)


def test_variants_for_older_clusters_carry_no_match_conditions(rendered: Rendered) -> None:
    # The older schemas know the field (alpha, beta), so validation alone would not notice it.
    hooks = rendered.configuration["webhooks"]
    if rendered.variant.match_conditions:
        assert all(hook.get("matchConditions") for hook in hooks)
    else:
        assert not any("matchConditions" in hook for hook in hooks)


def test_no_namespace_is_created_so_uninstall_never_deletes_openshift_mtv(
    rendered: Rendered,
) -> None:
    assert not rendered.all("Namespace")


def test_every_namespaced_object_is_in_openshift_mtv(rendered: Rendered) -> None:
    for item in rendered.objects:
        namespace = item["metadata"].get("namespace")
        if item["kind"] in CLUSTER_SCOPED_KINDS:
            assert namespace is None, item["kind"]
        else:
            assert namespace == NAMESPACE, f"{item['kind']}/{item['metadata']['name']}"


def test_every_object_carries_the_project_labels(rendered: Rendered) -> None:
    for item in rendered.objects:
        labels = item["metadata"].get("labels", {})
        assert labels.items() >= LABELS.items(), f"{item['kind']}/{item['metadata']['name']}"

    template_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels.items() >= LABELS.items()


# The CRD kinds, checked by hand against the fields their CRDs require or constrain.

_CERTIFICATE_FIELDS = {
    "secretName", "issuerRef", "isCA", "commonName", "dnsNames", "ipAddresses", "uris",
    "duration", "renewBefore", "usages", "privateKey", "subject", "secretTemplate",
}
_KEY_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}
_ISSUER_TYPES = {"selfSigned", "ca", "acme", "vault", "venafi"}
_ENDPOINT_FIELDS = {"port", "targetPort", "scheme", "path", "interval", "scrapeTimeout",
                    "tlsConfig", "relabelings", "metricRelabelings", "honorLabels"}
_TLS_FIELDS = {"ca", "serverName", "cert", "keySecret", "insecureSkipVerify"}
_LABEL_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_certificate(certificate: Manifest) -> None:
    spec: dict[str, Any] = certificate["spec"]
    assert set(spec) <= _CERTIFICATE_FIELDS, set(spec) - _CERTIFICATE_FIELDS
    assert _LABEL_NAME.match(spec["secretName"])
    assert spec["issuerRef"]["name"]
    assert spec["issuerRef"].get("kind", "Issuer") in {"Issuer", "ClusterIssuer"}
    assert spec.get("commonName") or spec.get("dnsNames") or spec.get("ipAddresses")
    assert set(spec.get("usages", [])) <= _KEY_USAGES

    # cert-manager refuses certificates shorter than an hour, or renewed before they start.
    duration = parse_duration(spec.get("duration", "2160h"))
    assert duration >= 3600
    if "renewBefore" in spec:
        assert parse_duration(spec["renewBefore"]) < duration

    key = spec.get("privateKey", {})
    assert set(key) <= {"algorithm", "size", "encoding", "rotationPolicy"}
    assert key.get("rotationPolicy", "Always") in {"Never", "Always"}
    if key.get("algorithm") == "ECDSA":
        assert key.get("size", 256) in {256, 384, 521}


def _check_issuer(issuer: Manifest) -> None:
    spec: dict[str, Any] = issuer["spec"]
    assert len(set(spec) & _ISSUER_TYPES) == 1, spec
    assert set(spec) <= _ISSUER_TYPES
    if "ca" in spec:
        assert _LABEL_NAME.match(spec["ca"]["secretName"])


def _check_service_monitor(monitor: Manifest) -> None:
    spec: dict[str, Any] = monitor["spec"]
    assert spec["selector"]["matchLabels"]
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= _ENDPOINT_FIELDS, set(endpoint) - _ENDPOINT_FIELDS
        assert endpoint["scheme"] in {"http", "https"}
        tls = endpoint.get("tlsConfig", {})
        assert set(tls) <= _TLS_FIELDS
        if "ca" in tls:
            # A SecretOrConfigMap: exactly one of the two, each with a name and a key.
            (source,) = tls["ca"].values()
            assert len(tls["ca"]) == 1
            assert set(tls["ca"]) <= {"secret", "configMap"}
            assert source["name"]
            assert source["key"]


def test_custom_resources_have_the_fields_their_crds_require(rendered: Rendered) -> None:
    checks = {"Certificate": _check_certificate, "Issuer": _check_issuer,
              "ServiceMonitor": _check_service_monitor}
    for item in rendered.objects:
        if (item["apiVersion"], item["kind"]) in CUSTOM_KINDS:
            assert _LABEL_NAME.match(item["metadata"]["name"])
            checks[item["kind"]](item)

    assert bool(rendered.all("Certificate")) == rendered.variant.kubernetes
    assert bool(rendered.all("ServiceMonitor")) == rendered.variant.service_monitor
