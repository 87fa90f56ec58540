"""Rendering deploy/ with kustomize, and finding the objects the tests look at in the result."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway_yeeter.cli import serve

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPONENTS_DIR = DEPLOY_DIR / "components"
OVERLAYS_DIR = DEPLOY_DIR / "overlays"
KUBE_BINARIES_SCRIPT = REPO_ROOT / "hack" / "kube-binaries.sh"

NAMESPACE = "openshift-mtv"
NAME = "gateway-yeeter"

# The order matters where two components touch the same object: kubernetes switches the
# ServiceMonitor's CA, so it comes after service-monitor (deploy/README.md says so too).
COMPONENT_ORDER = ("service-monitor", "every-cdi-importer", "kubernetes", "no-match-conditions")

Manifest = dict[str, Any]


class KustomizeNotFound(RuntimeError):
    """No way to run kustomize on this machine; the message says what was tried."""


def kustomize_command() -> list[str]:
    """The command that renders a kustomization given as its last argument.

    In order: ``GATEWAY_YEETER_KUSTOMIZE``, ``kustomize`` on PATH, ``kubectl kustomize``, and
    last the pinned kustomize that hack/kube-binaries.sh builds (or finds in its cache).
    """
    override = os.environ.get("GATEWAY_YEETER_KUSTOMIZE")
    if override:
        return [override, "build"]

    on_path = shutil.which("kustomize")
    if on_path:
        return [on_path, "build"]

    kubectl = shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]

    if KUBE_BINARIES_SCRIPT.is_file():
        completed = subprocess.run(
            ["bash", str(KUBE_BINARIES_SCRIPT), "kustomize"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
        )
        for line in completed.stdout.splitlines():
            name, _, path = line.partition("=")
            if name == "kustomize" and path:
                return [path, "build"]
        raise KustomizeNotFound(
            f"{KUBE_BINARIES_SCRIPT.name} kustomize failed ({completed.returncode}):\n"
            f"{completed.stderr[-2000:]}"
        )

    raise KustomizeNotFound(
        "no kustomize: set GATEWAY_YEETER_KUSTOMIZE, or put kustomize or kubectl on PATH"
    )


def render(command: Sequence[str], kustomization_dir: Path) -> list[Manifest]:
    """Build one kustomization and return its objects in kustomize's order."""
    completed = subprocess.run(
        [*command, str(kustomization_dir)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"kustomize failed for {kustomization_dir}:\n{completed.stderr}"
        )
    return [document for document in yaml.safe_load_all(completed.stdout) if document]


def write_overlay(directory: Path, components: Iterable[str]) -> Path:
    """Write an admin's overlay: the base plus the named components, in the given order.

    kustomize takes only relative paths, so they are written relative to ``directory``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    base = os.path.relpath(DEPLOY_DIR / "base", directory)
    component_paths = [os.path.relpath(COMPONENTS_DIR / name, directory) for name in components]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "components": component_paths,
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return directory


@dataclass(frozen=True)
class Variant:
    """One way to deploy: a set of components on the base, and what that set implies."""

    components: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(("base", *self.components))

    @property
    def kubernetes(self) -> bool:
        """cert-manager instead of OpenShift's service-ca."""
        return "kubernetes" in self.components

    @property
    def match_conditions(self) -> bool:
        return "no-match-conditions" not in self.components

    @property
    def every_cdi_importer(self) -> bool:
        return "every-cdi-importer" in self.components

    @property
    def service_monitor(self) -> bool:
        return "service-monitor" in self.components


def variant(*components: str) -> Variant:
    """A variant with its components in the order that composes them correctly."""
    return Variant(tuple(sorted(components, key=COMPONENT_ORDER.index)))


def every_variant() -> list[Variant]:
    """Every combination of components that makes sense: platform x API level x extras."""
    variants = []
    for platform in ((), ("kubernetes",)):
        for level in ((), ("no-match-conditions",)):
            for extras in ((), ("service-monitor",), ("every-cdi-importer",),
                           ("service-monitor", "every-cdi-importer")):
                variants.append(variant(*platform, *level, *extras))
    return variants


# The ready-made entry points, and the components each one stands for.
ENTRY_POINTS: Mapping[str, Variant] = {
    "deploy": variant(),
    "deploy/overlays/openshift-before-4.17": variant("no-match-conditions"),
    "deploy/overlays/kubernetes": variant("kubernetes"),
    "deploy/overlays/kubernetes-before-1.30": variant("kubernetes", "no-match-conditions"),
}


@dataclass
class Rendered:
    """The objects of one rendered variant, with lookups by kind and name."""

    variant: Variant
    objects: list[Manifest] = field(default_factory=list)

    def all(self, kind: str) -> list[Manifest]:
        return [item for item in self.objects if item["kind"] == kind]

    def one(self, kind: str, name: str = NAME) -> Manifest:
        found = [item for item in self.all(kind) if item["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.variant.name}: {len(found)} {kind} named {name}"
        return found[0]

    @property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def container(self) -> Manifest:
        containers = self.deployment["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]  # type: ignore[no-any-return]

    @property
    def service(self) -> Manifest:
        return self.one("Service")

    @property
    def configuration(self) -> Manifest:
        return self.one("MutatingWebhookConfiguration")

    def webhook(self, name: str) -> Manifest:
        found = [hook for hook in self.configuration["webhooks"] if hook["name"] == name]
        assert len(found) == 1, f"{self.variant.name}: {len(found)} webhooks named {name}"
        return found[0]  # type: ignore[no-any-return]


def serve_flags(rendered: Rendered) -> dict[str, Any]:
    """The values `gateway-yeeter serve` gets from the container's args, defaults filled in."""
    args = rendered.container["args"]
    assert args[0] == "serve"
    context = serve.make_context("serve", list(args[1:]))
    return dict(context.params)
