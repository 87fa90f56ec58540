"""Every object of every deploy/ variant is accepted by a real kube-apiserver.

Each shipped entry point, and each combination of components on the base, is rendered by
kustomize and every object is sent as a server-side apply with `dryRun=All` and strict field
validation: the API server runs its defaulting, validation (CEL of matchConditions included)
and admission, and stores nothing. The objects go out exactly as rendered, not through a
client's models, so no field is dropped or added on the way.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from .cluster import FIELD_MANAGER, LocalCluster
from .webhook_setup import DEPLOY_DIR, REPO_ROOT, Manifest, render, wait_until

NAMESPACE: Final = "openshift-mtv"

# In the order deploy/README.md asks for: service-monitor before kubernetes, which switches
# the ServiceMonitor to cert-manager's CA.
COMPONENTS: Final = ("service-monitor", "every-cdi-importer", "kubernetes", "no-match-conditions")
ENTRY_POINTS: Final = (
    "deploy",
    "deploy/overlays/openshift-before-4.17",
    "deploy/overlays/kubernetes",
    "deploy/overlays/kubernetes-before-1.30",
)
COMBINATIONS: Final = [
    combination
    for size in range(len(COMPONENTS) + 1)
    for combination in itertools.combinations(COMPONENTS, size)
]

# cert-manager's and the Prometheus Operator's kinds, which a bare API server lacks. These
# CRDs take any content: they check that the API machinery accepts the objects (group,
# version, kind, scope, metadata), not cert-manager's or the operator's own schema.
FOREIGN_KINDS: Final = (
    ("cert-manager.io", "v1", "Certificate", "certificates"),
    ("cert-manager.io", "v1", "Issuer", "issuers"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors"),
)


def _custom_resource_definition(group: str, version: str, kind: str, plural: str) -> Manifest:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "versions": [
                {
                    "name": version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


class ApiServer:
    """Raw requests to the API server as the admin, with paths found through discovery."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.http = httpx.Client(
            base_url=cluster.server_url,
            verify=cluster.admin_tls_context(),
            trust_env=False,
            timeout=30,
        )
        self._resources: dict[str, dict[str, tuple[str, bool]]] = {}

    def resources(self, api_version: str, *, refresh: bool = False) -> dict[str, tuple[str, bool]]:
        """Kind -> (plural, namespaced) of one group version, as discovery lists them."""
        if refresh or api_version not in self._resources:
            prefix = "/api" if "/" not in api_version else "/apis"
            response = self.http.get(f"{prefix}/{api_version}")
            if response.status_code == 404:
                return {}
            response.raise_for_status()
            self._resources[api_version] = {
                resource["kind"]: (resource["name"], resource["namespaced"])
                for resource in response.json()["resources"]
                if "/" not in resource["name"]
            }
        return self._resources[api_version]

    def path_of(self, manifest: Manifest) -> str:
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        plural, namespaced = self.resources(api_version)[kind]
        prefix = "/api" if "/" not in api_version else "/apis"
        name, namespace = manifest["metadata"]["name"], manifest["metadata"].get("namespace")
        if not namespaced:
            return f"{prefix}/{api_version}/{plural}/{name}"
        assert namespace, f"{kind}/{name} has no namespace"
        return f"{prefix}/{api_version}/namespaces/{namespace}/{plural}/{name}"

    def apply(self, manifest: Manifest, *, dry_run: bool) -> httpx.Response:
        """Server-side apply, as `kubectl apply --server-side [--dry-run=server]` sends it."""
        parameters = {"fieldManager": FIELD_MANAGER, "fieldValidation": "Strict", "force": "true"}
        if dry_run:
            parameters["dryRun"] = "All"
        return self.http.patch(
            self.path_of(manifest),
            params=parameters,
            content=json.dumps(manifest),
            headers={"content-type": "application/apply-patch+yaml"},
        )

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="module")
def api_server(local_cluster: LocalCluster, kube_client: Client) -> Iterator[ApiServer]:
    """The API server with the namespace deploy/ uses and CRDs for the foreign kinds."""
    api = ApiServer(local_cluster)
    try:
        kube_client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    except ApiError as error:
        if error.status.code != 409:
            raise

    # Created for real, and left: the control plane goes away with the session.
    for group, version, kind, plural in FOREIGN_KINDS:
        crd = _custom_resource_definition(group, version, kind, plural)
        response = api.apply(crd, dry_run=False)
        assert response.is_success, response.text
    for group, version, kind, _ in FOREIGN_KINDS:
        served = functools.partial(_serves, api, f"{group}/{version}", kind)
        wait_until(served, what=f"{kind} served at {group}/{version}")

    yield api
    api.close()


def _serves(api: ApiServer, api_version: str, kind: str) -> bool:
    return kind in api.resources(api_version, refresh=True)


def _lost_on_the_way(sent: Any, returned: Any, path: str = "") -> list[str]:
    """Paths of what was sent but does not come back as sent (defaults added are fine)."""
    if isinstance(sent, dict):
        if not isinstance(returned, dict):
            return [path or "/"]
        return [
            lost
            for key, value in sent.items()
            for lost in _lost_on_the_way(value, returned.get(key), f"{path}/{key}")
        ]
    if isinstance(sent, list):
        if not isinstance(returned, list) or len(returned) != len(sent):
            return [path]
        return [
            lost
            for index, (value, back) in enumerate(zip(sent, returned, strict=True))
            for lost in _lost_on_the_way(value, back, f"{path}/{index}")
        ]
    return [] if sent == returned else [path]


def _assert_every_object_accepted(api: ApiServer, manifests: list[Manifest]) -> None:
    refused: list[str] = []
    for manifest in manifests:
        label = f"{manifest['kind']}/{manifest['metadata']['name']}"
        response = api.apply(manifest, dry_run=True)
        if not response.is_success:
            refused.append(f"{label}: {response.status_code} {response.json().get('message')}")
            continue
        # A field the server does not know, or prunes without a word (as an API server
        # without matchConditions would), shows up here.
        lost = _lost_on_the_way(manifest, response.json())
        if lost:
            refused.append(f"{label}: not kept as sent: {', '.join(lost)}")
        if response.headers.get("warning"):
            refused.append(f"{label}: warning: {response.headers['warning']}")

    assert refused == [], "refused by the API server:\n" + "\n".join(refused)
    assert {m["kind"] for m in manifests} >= {"Deployment", "MutatingWebhookConfiguration"}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_shipped_entry_point_applies_to_the_apiserver(
    entry_point: str, kustomize_binary: Path, api_server: ApiServer
) -> None:
    _assert_every_object_accepted(api_server, render(kustomize_binary, REPO_ROOT / entry_point))


@pytest.mark.parametrize(
    "components", COMBINATIONS, ids=["+".join(("base", *c)) for c in COMBINATIONS]
)
def test_components_on_the_base_apply_to_the_apiserver(
    components: tuple[str, ...], kustomize_binary: Path, api_server: ApiServer, tmp_path: Path
) -> None:
    # An admin's own overlay, as deploy/README.md shows it; kustomize wants relative paths.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY_DIR / "base", tmp_path)],
        "components": [
            os.path.relpath(DEPLOY_DIR / "components" / c, tmp_path) for c in components
        ],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    _assert_every_object_accepted(api_server, render(kustomize_binary, tmp_path))
