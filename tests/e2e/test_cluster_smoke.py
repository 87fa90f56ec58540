"""The harness itself: the local control plane stores pods and honours server-side dry-run."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from lightkube import ApiError, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount

from .cluster import LocalCluster

pytestmark = pytest.mark.e2e

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"


def _pod(name: str, namespace: str) -> Pod:
    # No kubelet runs, so the image is never pulled; the pod only has to pass admission.
    return Pod(
        metadata=ObjectMeta(
            name=name,
            namespace=namespace,
            annotations={NETWORKS_ANNOTATION: '[{"name":"transfer","namespace":"mtv"}]'},
        ),
        spec=PodSpec(containers=[Container(name="main", image="example.invalid/smoke:1")]),
    )


def test_namespace_helper_creates_the_default_service_account(
    kube_client: Client, namespace: str
) -> None:
    service_account = kube_client.get(ServiceAccount, "default", namespace=namespace)

    assert service_account.metadata is not None
    assert service_account.metadata.namespace == namespace


def test_created_pod_is_stored_and_read_back(kube_client: Client, namespace: str) -> None:
    created = kube_client.create(_pod("smoke", namespace))

    stored = kube_client.get(Pod, "smoke", namespace=namespace)

    assert created.metadata is not None
    assert stored.metadata is not None
    assert stored.metadata.uid == created.metadata.uid
    assert stored.metadata.annotations == {
        NETWORKS_ANNOTATION: '[{"name":"transfer","namespace":"mtv"}]'
    }
    # Set by the ServiceAccount admission plugin, which is on as in a real cluster.
    assert stored.spec is not None
    assert stored.spec.serviceAccountName == "default"


def test_server_side_dry_run_create_returns_the_pod_but_does_not_store_it(
    kube_client: Client, namespace: str
) -> None:
    answered = kube_client.create(_pod("dry-run", namespace), dry_run=True)

    assert answered.metadata is not None
    assert answered.metadata.name == "dry-run"
    assert answered.spec is not None
    assert answered.spec.serviceAccountName == "default"
    with pytest.raises(ApiError) as not_found:
        kube_client.get(Pod, "dry-run", namespace=namespace)
    assert not_found.value.status.code == 404


def test_written_kubeconfig_reaches_the_apiserver(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    path = local_cluster.write_kubeconfig(tmp_path / "kubeconfig")

    client = Client(config=KubeConfig.from_file(path), trust_env=False)
    try:
        default = client.get(Namespace, "default")
    finally:
        client.close()

    assert default.metadata is not None
    assert default.metadata.name == "default"


def test_apiserver_listens_and_dials_on_loopback_only(local_cluster: LocalCluster) -> None:
    values = dict(flag.removeprefix("--").split("=", 1) for flag in local_cluster.apiserver_flags)

    etcd_hosts = {urlsplit(url).hostname for url in values["etcd-servers"].split(",")}

    assert values["bind-address"] == "127.0.0.1"
    assert values["advertise-address"] == "127.0.0.1"
    assert etcd_hosts == {"127.0.0.1"}
    assert urlsplit(local_cluster.server_url).hostname == "127.0.0.1"


def test_kustomize_renders_a_kustomization(kustomize_binary: Path, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: openshift-mtv\n"
        "configMapGenerator:\n"
        "- name: smoke\n"
        "  literals: [greeting=hello]\n"
        "  options: {disableNameSuffixHash: true}\n"
    )

    rendered = subprocess.run(
        [str(kustomize_binary), "build", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )

    assert "kind: ConfigMap" in rendered.stdout
    assert "namespace: openshift-mtv" in rendered.stdout
    assert "greeting: hello" in rendered.stdout
