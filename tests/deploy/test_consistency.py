"""The manifests agree with the server: names, ports, paths, selectors, flags and timings.

The server's code is the source of truth; these tests hold deploy/ to it, so a change on one
side that the other does not follow fails here rather than in a cluster.
"""

from __future__ import annotations

from pathlib import Path

import click
import yaml

import gateway_yeeter
from gateway_yeeter.cli import build_policy, main, serve
from gateway_yeeter.config import DEFAULT_CERT_DIR, ServeSettings
from gateway_yeeter.server import HEALTHZ_PATH, METRICS_PATH, MUTATE_PATH, READYZ_PATH
from gateway_yeeter.targeting import (
    DEFAULT_TARGETS,
    EVERY_CDI_IMPORTER_SELECTOR,
    PodKind,
    parse_selector,
)
from tests.deploy.manifests import (
    DEPLOY_DIR,
    NAME,
    NAMESPACE,
    Manifest,
    Rendered,
    render,
    serve_flags,
    write_overlay,
)

WEBHOOK_KINDS = {
    "virt-v2v.gateway.yeet": PodKind.VIRT_V2V,
    "virt-v2v-inspection.gateway.yeet": PodKind.INSPECTION,
    "cdi.gateway.yeet": PodKind.CDI_IMPORTER,
}
SECRET_NAME = "gateway-yeeter-certs"
SERVING_CERT_ANNOTATION = "service.beta.openshift.io/serving-cert-secret-name"
INJECT_CABUNDLE_ANNOTATION = "service.beta.openshift.io/inject-cabundle"
INJECT_CA_FROM_ANNOTATION = "cert-manager.io/inject-ca-from"


def _service_port(rendered: Rendered) -> Manifest:
    (port,) = rendered.service["spec"]["ports"]
    return port  # type: ignore[no-any-return]


def _container_port(rendered: Rendered) -> Manifest:
    (port,) = rendered.container["ports"]
    return port  # type: ignore[no-any-return]


def test_container_runs_the_serve_command(rendered: Rendered) -> None:
    assert rendered.container["name"] == NAME
    assert rendered.container["args"][0] in main.commands


def test_every_webhook_calls_the_service_on_the_mutate_route(rendered: Rendered) -> None:
    service = rendered.service
    for hook in rendered.configuration["webhooks"]:
        assert hook["clientConfig"]["service"] == {
            "namespace": service["metadata"]["namespace"],
            "name": service["metadata"]["name"],
            "path": MUTATE_PATH,
            "port": _service_port(rendered)["port"],
        }


def test_service_reaches_the_port_the_server_listens_on(rendered: Rendered) -> None:
    service_port = _service_port(rendered)
    container_port = _container_port(rendered)
    listening = serve_flags(rendered)["secure_port"]

    assert service_port["port"] == 443
    assert service_port["name"] == container_port["name"] == "https"
    assert service_port["targetPort"] == container_port["containerPort"] == listening
    assert listening == ServeSettings().secure_port


def test_service_selects_the_deployments_pods(rendered: Rendered) -> None:
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    selector = rendered.service["spec"]["selector"]

    assert selector.items() <= pod_labels.items()


def test_deployment_keeps_the_go_webhooks_selector_which_cannot_change(
    rendered: Rendered,
) -> None:
    assert rendered.deployment["spec"]["selector"] == {"matchLabels": {"app": NAME}}


def test_probes_ask_the_server_routes_over_https(rendered: Rendered) -> None:
    container = rendered.container
    named_port = _container_port(rendered)["name"]

    for probe, path in (("readinessProbe", READYZ_PATH), ("livenessProbe", HEALTHZ_PATH)):
        check = container[probe]["httpGet"]
        assert check == {"path": path, "port": named_port, "scheme": "HTTPS"}


def test_serving_certificate_is_mounted_where_the_server_reads_it(rendered: Rendered) -> None:
    flags = serve_flags(rendered)
    pod = rendered.deployment["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    (mount,) = rendered.container["volumeMounts"]

    assert volume["secret"]["secretName"] == SECRET_NAME
    assert mount["name"] == volume["name"]
    assert mount["readOnly"] is True
    assert Path(mount["mountPath"]) == DEFAULT_CERT_DIR
    assert flags["tls_cert_file"] == ServeSettings().tls_cert_file
    assert flags["tls_private_key_file"] == ServeSettings().tls_private_key_file
    assert flags["tls_cert_file"].parent == flags["tls_private_key_file"].parent == DEFAULT_CERT_DIR
    assert not flags["self_signed"]


def test_the_certificate_source_writes_the_mounted_secret(rendered: Rendered) -> None:
    service_annotations = rendered.service["metadata"].get("annotations", {})
    configuration_annotations = rendered.configuration["metadata"].get("annotations", {})

    if not rendered.variant.kubernetes:
        assert service_annotations == {SERVING_CERT_ANNOTATION: SECRET_NAME}
        assert configuration_annotations == {INJECT_CABUNDLE_ANNOTATION: "true"}
        return

    # cert-manager: no service-ca annotation left anywhere, and the caBundle comes from the
    # very Certificate that writes the mounted Secret.
    for item in rendered.objects:
        annotations = item["metadata"].get("annotations", {})
        assert not any(key.startswith("service.beta.openshift.io/") for key in annotations)
    (serving,) = [
        certificate for certificate in rendered.all("Certificate")
        if certificate["spec"]["secretName"] == SECRET_NAME
    ]
    assert configuration_annotations == {
        INJECT_CA_FROM_ANNOTATION: f"{NAMESPACE}/{serving['metadata']['name']}"
    }
    service_dns_name = f"{NAME}.{NAMESPACE}.svc"
    assert service_dns_name in serving["spec"]["dnsNames"]
    assert "server auth" in serving["spec"]["usages"]
    assert not serving["spec"].get("isCA", False)


def test_certificate_issuers_chain_up_to_a_self_signed_one(rendered: Rendered) -> None:
    if not rendered.variant.kubernetes:
        return
    issuers = {issuer["metadata"]["name"]: issuer["spec"] for issuer in rendered.all("Issuer")}
    certificates = {item["spec"]["secretName"]: item["spec"]
                    for item in rendered.all("Certificate")}

    # Follow serving certificate -> CA issuer -> CA certificate -> self-signed issuer.
    spec = certificates[SECRET_NAME]
    for _ in range(len(certificates) + 1):
        issuer = issuers[spec["issuerRef"]["name"]]
        if "selfSigned" in issuer:
            break
        spec = certificates[issuer["ca"]["secretName"]]
        assert spec["isCA"] is True
    else:
        raise AssertionError("issuer chain loops")


def test_each_pod_kind_has_one_webhook_under_its_established_name(rendered: Rendered) -> None:
    names = [hook["name"] for hook in rendered.configuration["webhooks"]]

    assert sorted(names) == sorted(WEBHOOK_KINDS)
    assert set(WEBHOOK_KINDS.values()) == set(PodKind)


def test_object_selectors_are_the_selectors_the_server_applies(rendered: Rendered) -> None:
    # The server re-checks labels with the selectors its flags give it; the API server sends
    # what the objectSelector matches. They must be the same, or pods are sent for nothing
    # or, worse, never sent.
    flags = serve_flags(rendered)
    policy = build_policy(
        virt_v2v_selector=flags["virt_v2v_selector"],
        inspection_selector=flags["inspection_selector"],
        cdi_importer_selector=flags["cdi_importer_selector"],
        all_cdi_importers=flags["all_cdi_importers"],
        only_networks=flags["only_networks"],
    )

    for name, kind in WEBHOOK_KINDS.items():
        selector = rendered.webhook(name)["objectSelector"]
        assert selector == policy.targets.selectors[kind].to_kubernetes(), name


def test_default_variants_use_the_default_selectors(rendered: Rendered) -> None:
    if rendered.variant.every_cdi_importer:
        return
    assert "--all-cdi-importers" not in rendered.container["args"]
    for name, kind in WEBHOOK_KINDS.items():
        expected = DEFAULT_TARGETS.selectors[kind].to_kubernetes()
        assert rendered.webhook(name)["objectSelector"] == expected, name


def test_every_cdi_importer_widens_both_the_selector_and_the_server(rendered: Rendered) -> None:
    if not rendered.variant.every_cdi_importer:
        return
    assert "--all-cdi-importers" in rendered.container["args"]
    expected = parse_selector(EVERY_CDI_IMPORTER_SELECTOR).to_kubernetes()
    assert rendered.webhook("cdi.gateway.yeet")["objectSelector"] == expected
    for name in ("virt-v2v.gateway.yeet", "virt-v2v-inspection.gateway.yeet"):
        kind = WEBHOOK_KINDS[name]
        expected = DEFAULT_TARGETS.selectors[kind].to_kubernetes()
        assert rendered.webhook(name)["objectSelector"] == expected


def test_webhooks_are_called_only_for_pod_creation(rendered: Rendered) -> None:
    for hook in rendered.configuration["webhooks"]:
        assert hook["rules"] == [{
            "operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
            "resources": ["pods"], "scope": "Namespaced",
        }]
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["admissionReviewVersions"] == ["v1", "v1beta1"]
        assert 1 <= hook["timeoutSeconds"] <= 30


def test_failure_policy_is_fail_only_where_match_conditions_narrow_the_calls(
    rendered: Rendered,
) -> None:
    expected = "Fail" if rendered.variant.match_conditions else "Ignore"
    for hook in rendered.configuration["webhooks"]:
        assert hook["failurePolicy"] == expected, hook["name"]


def test_grace_period_covers_the_whole_drain(rendered: Rendered) -> None:
    flags = serve_flags(rendered)
    grace = rendered.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]

    assert "--shutdown-delay=5s" in rendered.container["args"]
    assert grace > flags["shutdown_delay"] + flags["shutdown_timeout"]


def test_server_drains_by_itself_so_no_pre_stop_hook_is_needed(rendered: Rendered) -> None:
    assert "lifecycle" not in rendered.container
    assert serve_flags(rendered)["shutdown_delay"] > 0


def test_rollouts_and_drains_keep_a_replica_serving(rendered: Rendered) -> None:
    spec = rendered.deployment["spec"]
    budget = rendered.one("PodDisruptionBudget")["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]

    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert budget["minAvailable"] == 1
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_pod_runs_restricted_without_api_credentials(rendered: Rendered) -> None:
    pod = rendered.deployment["spec"]["template"]["spec"]
    container = rendered.container
    account = rendered.one("ServiceAccount")

    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The only Role is the one letting Prometheus find the pods, bound to Prometheus.
    for binding in rendered.all("RoleBinding"):
        assert all(subject["name"] != account["metadata"]["name"]
                   for subject in binding["subjects"])


def test_no_cpu_limit_and_a_memory_limit(rendered: Rendered) -> None:
    resources = rendered.container["resources"]

    assert set(resources["limits"]) == {"memory"}
    assert set(resources["requests"]) == {"cpu", "memory"}


def test_service_link_variables_cannot_reach_the_servers_flags(rendered: Rendered) -> None:
    # Kubernetes would name them after the Service, with the prefix the flags read.
    pod = rendered.deployment["spec"]["template"]["spec"]
    prefix = NAME.upper().replace("-", "_")
    port = _service_port(rendered)
    service_links = {
        f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT",
        f"{prefix}_SERVICE_PORT_{port['name'].upper()}", f"{prefix}_PORT",
        f"{prefix}_PORT_{port['port']}_TCP", f"{prefix}_PORT_{port['port']}_TCP_PROTO",
        f"{prefix}_PORT_{port['port']}_TCP_PORT", f"{prefix}_PORT_{port['port']}_TCP_ADDR",
    }
    flag_variables = {
        parameter.envvar for parameter in serve.params
        if isinstance(parameter, click.Option) and isinstance(parameter.envvar, str)
    }

    assert pod["enableServiceLinks"] is False
    assert not service_links & flag_variables
    assert "env" not in rendered.container


def test_service_monitor_scrapes_metrics_on_the_webhook_port(rendered: Rendered) -> None:
    if not rendered.variant.service_monitor:
        return
    monitor = rendered.one("ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]

    assert monitor["selector"]["matchLabels"].items() <= (
        rendered.service["metadata"]["labels"].items()
    )
    assert endpoint["port"] == _service_port(rendered)["name"]
    assert endpoint["path"] == METRICS_PATH
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["serverName"] == f"{NAME}.{NAMESPACE}.svc"
    if rendered.variant.kubernetes:
        expected_ca = {"secret": {"name": SECRET_NAME, "key": "ca.crt"}}
    else:
        expected_ca = {"configMap": {"name": "openshift-service-ca.crt", "key": "service-ca.crt"}}
    assert endpoint["tlsConfig"]["ca"] == expected_ca


def test_image_tag_is_the_project_version() -> None:
    kustomization = yaml.safe_load((DEPLOY_DIR / "base" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]

    assert image["name"] == NAME
    assert image["newTag"] == gateway_yeeter.__version__


def test_an_admins_overlay_replaces_the_image_as_the_base_comment_says(
    kustomize: list[str], tmp_path: Path
) -> None:
    overlay = write_overlay(tmp_path, ())
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["images"] = [{
        "name": "quay.io/example/gateway-yeeter",
        "newName": "registry.example/team/gateway-yeeter",
        "newTag": "1.0.0",
    }]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    (deployment,) = [item for item in render(kustomize, overlay) if item["kind"] == "Deployment"]

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/team/gateway-yeeter:1.0.0"
