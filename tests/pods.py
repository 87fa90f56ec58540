"""Pods and AdmissionReviews shaped like the ones Forklift and CDI create (names invented)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import orjson

NETWORKS = "k8s.v1.cni.cncf.io/networks"
FORKLIFT_NETWORKS = (
    '[{"name":"transfer-l2","namespace":"openshift-mtv","default-route":["192.168.50.1"]}]'
)

PLAN_LABELS = {
    "migration": "5e1c9a7b-88f2-4f0e-b1d3-6a0c2e4f8b19",
    "plan": "c2d4e6f8-0a1b-4c3d-9e5f-7a8b9c0d1e2f",
    "plan-name": "warehouse-db",
    "plan-namespace": "openshift-mtv",
    "vmID": "vm-2041",
}


def _owner(kind: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "forklift.konveyor.io/v1beta1",
        "kind": kind,
        "name": name,
        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def virt_v2v_pod(networks: str | None = FORKLIFT_NETWORKS, **labels: str) -> dict[str, Any]:
    """A virt-v2v conversion pod as Forklift's controller creates it."""
    annotations = {NETWORKS: networks} if networks is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "warehouse-db-vm-2041-",
            "namespace": "vm-migrations",
            "labels": {"forklift.app": "virt-v2v", **PLAN_LABELS, "resource": "vm", **labels},
            "annotations": annotations,
            "ownerReferences": [_owner("Plan", "warehouse-db")],
        },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "default",
            "containers": [
                {
                    "name": "virt-v2v",
                    "image": "registry.example/forklift/virt-v2v@sha256:" + "ab" * 32,
                    "env": [
                        {"name": "V2V_vmName", "value": "warehouse-db"},
                        {"name": "V2V_source", "value": "vSphere"},
                        {"name": "V2V_libvirtURL",
                         "value": "vpx://administrator%40vsphere.local@vcenter.example/DC/host/h1"},
                        {"name": "V2V_secretKey", "valueFrom": {"secretKeyRef": {
                            "name": "warehouse-db-vm-2041-x7k2p", "key": "password"}}},
                    ],
                    "volumeMounts": [{"name": "libvirt-domain-xml", "mountPath": "/mnt/v2v"},
                                     {"name": "vddk-vol-mount", "mountPath": "/opt"}],
                    "volumeDevices": [{"name": "vol-0", "devicePath": "/dev/block0"}],
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                }
            ],
            "volumes": [
                {"name": "libvirt-domain-xml", "configMap": {"name": "warehouse-db-vm-2041"}},
                {"name": "vddk-vol-mount", "emptyDir": {}},
                {"name": "vol-0", "persistentVolumeClaim": {"claimName": "warehouse-db-disk-0"}},
            ],
        },
    }


def inspection_pod(networks: str | None = FORKLIFT_NETWORKS) -> dict[str, Any]:
    """A virt-v2v inspection pod: the conversion pod's shape with its own app label."""
    pod = virt_v2v_pod(networks)
    pod["metadata"]["generateName"] = "warehouse-db-vm-2041-inspection-"
    pod["metadata"]["labels"]["forklift.app"] = "virt-v2v-inspection"
    return pod


def cdi_importer_pod(networks: str | None = FORKLIFT_NETWORKS, *, forklift: bool = True) -> (
    dict[str, Any]
):
    """A CDI importer pod; with ``forklift`` it carries the PVC's Forklift plan labels."""
    labels = {"app": "containerized-data-importer", "cdi.kubevirt.io": "importer",
              "app.kubernetes.io/component": "storage",
              "app.kubernetes.io/managed-by": "cdi-controller"}
    if forklift:
        labels |= PLAN_LABELS
    annotations = {NETWORKS: networks} if networks is not None else {}
    annotations["cdi.kubevirt.io/storage.import.source"] = "vddk"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "importer-prime-3f9a1c2e-warehouse-db-disk-0",
            "namespace": "vm-migrations",
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "name": "prime-3f9a1c2e", "uid": str(uuid.uuid4()),
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "restartPolicy": "OnFailure",
            "containers": [
                {
                    "name": "importer",
                    "image": "registry.example/cdi/importer:v1.60",
                    "args": ["-v=1"],
                    "env": [
                        {"name": "IMPORTER_SOURCE", "value": "vddk"},
                        {"name": "IMPORTER_ENDPOINT", "value": "https://vcenter.example/sdk"},
                        {"name": "IMPORTER_BACKING_FILE", "value": "[datastore1] wh-db/wh-db.vmdk"},
                        {"name": "IMPORTER_THUMBPRINT", "value": "AB:CD:EF:01:23"},
                    ],
                    "volumeDevices": [{"name": "cdi-data-vol",
                                       "devicePath": "/dev/cdi-block-volume"}],
                }
            ],
            "volumes": [{"name": "cdi-data-vol",
                         "persistentVolumeClaim": {"claimName": "prime-3f9a1c2e"}}],
        },
    }


def unrelated_pod() -> dict[str, Any]:
    pod = virt_v2v_pod()
    pod["metadata"]["labels"] = {"app": "web"}
    pod["metadata"]["generateName"] = "web-"
    return pod


def review(
    pod: dict[str, Any],
    *,
    api_version: str = "admission.k8s.io/v1",
    operation: str = "CREATE",
    uid: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview for a pod, as kube-apiserver sends it."""
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod["metadata"].get("namespace", "default"),
            "name": pod["metadata"].get("name", ""),
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:openshift-mtv:forklift-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": copy.deepcopy(pod),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def review_bytes(pod: dict[str, Any], **kwargs: Any) -> bytes:
    return orjson.dumps(review(pod, **kwargs))
