"""The webhook under test, registered with the local API server the way deploy/ registers it.

The MutatingWebhookConfiguration is the one kustomize renders from deploy/, changed only in
each webhook's `clientConfig`: the `service` reference becomes a loopback `url` and `caBundle`
holds the test CA. Its objectSelectors, matchConditions, failurePolicy, timeouts and
reinvocationPolicy are the shipped ones, so the API server applies them as in a cluster.

The API server's admission plugin learns about a new or changed configuration through an
informer, so a create or delete takes effect a moment later. `registered_webhooks` waits, with
a server-side dry-run probe pod, for the configuration to be in force before the test goes on,
and for it to be gone before the next test starts.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar, cast

import httpx
import yaml
from cryptography import x509
from lightkube import ApiError, Client
from lightkube.resources.admissionregistration_v1 import MutatingWebhookConfiguration
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway_yeeter.admission import REMOVED_ROUTES_ANNOTATION
from gateway_yeeter.networks import NETWORKS_ANNOTATION
from tests.pods import FORKLIFT_NETWORKS, virt_v2v_pod
from tests.webhook import WebhookProcess

from .cluster import LOOPBACK, LocalCluster

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY_DIR: Final = REPO_ROOT / "deploy"
MUTATE_PATH: Final = "/mutate"

# Long enough for an informer event on a loaded two-core machine, short enough that a
# configuration that never takes effect fails the test quickly.
TAKE_EFFECT_SECONDS: Final = 30.0
POLL_SECONDS: Final = 0.05

Manifest = dict[str, Any]
T = TypeVar("T")

_YEETED_POD = re.compile(r"YEETING default-route from pod (\S+)/(\S+) ")


# Polling


def wait_until(
    condition: Callable[[], T | None],
    *,
    what: str,
    timeout: float = TAKE_EFFECT_SECONDS,
    interval: float = POLL_SECONDS,
) -> T:
    """Poll `condition` until it returns a value other than None or False, and return it.

    For facts nothing announces (an informer catching up, a file reloaded); raises
    AssertionError naming `what` at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


# Rendering deploy/


def render(kustomize: Path, kustomization: Path) -> list[Manifest]:
    """The objects `kustomize build` makes of a kustomization folder, in its order."""
    completed = subprocess.run(
        [str(kustomize), "build", str(kustomization)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    if completed.returncode != 0:
        raise AssertionError(f"kustomize build {kustomization} failed:\n{completed.stderr}")
    return [document for document in yaml.safe_load_all(completed.stdout) if document]


def webhook_configuration_of(manifests: Sequence[Manifest]) -> Manifest:
    """The one MutatingWebhookConfiguration among rendered objects."""
    found = [m for m in manifests if m.get("kind") == "MutatingWebhookConfiguration"]
    assert len(found) == 1, f"expected one MutatingWebhookConfiguration, found {len(found)}"
    return found[0]


def pointed_at_loopback(
    configuration: Manifest, *, name: str, url: str, ca_bundle: bytes
) -> Manifest:
    """The rendered configuration under a new name, calling `url` and trusting `ca_bundle`.

    Only `metadata.name` and each webhook's `clientConfig` change; the webhooks keep their
    names, which the API server's error messages quote.
    """
    changed = copy.deepcopy(configuration)
    changed["metadata"]["name"] = name
    for webhook in changed["webhooks"]:
        webhook["clientConfig"] = {
            "url": url,
            "caBundle": base64.b64encode(ca_bundle).decode("ascii"),
        }
    return changed


def unique_name(stem: str) -> str:
    """A name no earlier test used, for objects the shared control plane keeps."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


# Pods


def pod_in(namespace: str, manifest: Manifest, *, name: str | None = None) -> Pod:
    """A pod manifest from tests/pods.py placed in `namespace`, optionally with a fixed name.

    A fixed name replaces `generateName`, so that the webhook's log line names the pod.
    """
    manifest = copy.deepcopy(manifest)
    metadata = manifest["metadata"]
    metadata["namespace"] = namespace
    if name is not None:
        metadata.pop("generateName", None)
        metadata["name"] = name
    return cast(Pod, Pod.from_dict(manifest))


def annotations_of(pod: Pod) -> dict[str, str]:
    assert pod.metadata is not None
    return dict(pod.metadata.annotations or {})


def networks_of(pod: Pod) -> list[Mapping[str, Any]]:
    """The network selection elements of a pod's networks annotation."""
    elements: list[Mapping[str, Any]] = json.loads(annotations_of(pod)[NETWORKS_ANNOTATION])
    return elements


def refusal_of(error: ApiError) -> str:
    """The API server's message for a request it refused."""
    return error.status.message or ""


def is_mutated(pod: Pod) -> bool:
    """Whether the webhook's edit is on the pod: no default-route, and the record of it."""
    annotations = annotations_of(pod)
    networks = annotations.get(NETWORKS_ANNOTATION, "")
    return "default-route" not in networks and REMOVED_ROUTES_ANNOTATION in annotations


class ProbeResult(StrEnum):
    """What a dry-run create of a virt-v2v pod with a default route came back as."""

    MUTATED = "mutated"
    UNCHANGED = "unchanged"
    REFUSED = "refused"


def probe(client: Client, namespace: str) -> ProbeResult:
    """Dry-run create a virt-v2v pod that carries a default route; nothing is stored."""
    pod = pod_in(namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name=unique_name("probe"))
    try:
        answered = client.create(pod, dry_run=True)
    except ApiError:
        return ProbeResult.REFUSED
    return ProbeResult.MUTATED if is_mutated(answered) else ProbeResult.UNCHANGED


# Registering the configuration


class RegisteredWebhooks:
    """A MutatingWebhookConfiguration created in the API server, and how to change it."""

    def __init__(self, client: Client, configuration: Manifest, *, probe_namespace: str) -> None:
        self.client = client
        self.configuration = configuration
        self.probe_namespace = probe_namespace

    @property
    def name(self) -> str:
        return str(self.configuration["metadata"]["name"])

    def set_ca_bundle(self, ca_bundle: bytes) -> None:
        """Replace every webhook's caBundle, as service-ca or cert-manager's cainjector do."""
        encoded = base64.b64encode(ca_bundle).decode("ascii")
        operations = [
            {"op": "replace", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
            for index in range(len(self.configuration["webhooks"]))
        ]
        self.client.patch(
            MutatingWebhookConfiguration, self.name, operations, patch_type=PatchType.JSON
        )

    def wait_for_probe(self, wanted: ProbeResult, *, what: str) -> None:
        wait_until(lambda: probe(self.client, self.probe_namespace) is wanted, what=what)


@contextlib.contextmanager
def registered_webhooks(
    client: Client, configuration: Manifest, *, probe_namespace: str
) -> Iterator[RegisteredWebhooks]:
    """Create the configuration, wait until it mutates a probe pod; delete it after, and wait.

    The webhook must be serving when this is entered and when it is left: in force, the
    configuration mutates the probe; gone, it leaves the probe as it is. A test that stops
    the webhook starts it again before leaving, or the removal cannot be told from an outage
    under failurePolicy Ignore.
    """
    client.create(
        cast(MutatingWebhookConfiguration, MutatingWebhookConfiguration.from_dict(configuration))
    )
    registered = RegisteredWebhooks(client, configuration, probe_namespace=probe_namespace)
    try:
        registered.wait_for_probe(
            ProbeResult.MUTATED, what=f"webhook configuration {registered.name} taking effect"
        )
        yield registered
    finally:
        client.delete(MutatingWebhookConfiguration, registered.name)
        registered.wait_for_probe(
            ProbeResult.UNCHANGED, what=f"webhook configuration {registered.name} going away"
        )


# Reading the webhook


def webhook_tls(ca_bundle: bytes) -> ssl.SSLContext:
    """Trust `ca_bundle` (PEM, one CA or several); the serving certificate names 127.0.0.1."""
    return ssl.create_default_context(cadata=ca_bundle.decode("ascii"))


def metric_samples(webhook: WebhookProcess, ca_bundle: bytes, sample_name: str) -> list[Sample]:
    """The samples named `sample_name` (e.g. `..._total`) on the webhook's /metrics."""
    response = httpx.get(f"{webhook.url}/metrics", verify=webhook_tls(ca_bundle), timeout=5)
    response.raise_for_status()
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == sample_name
    ]


def admission_requests(webhook: WebhookProcess, ca_bundle: bytes) -> float:
    """Requests the webhook has had on /mutate, whatever their result, by its own counter."""
    samples = metric_samples(webhook, ca_bundle, "gateway_yeeter_admission_requests_total")
    return sum(sample.value for sample in samples)


def certificate_reloads(webhook: WebhookProcess, ca_bundle: bytes) -> float:
    """How often the webhook has put a new serving certificate into service."""
    samples = metric_samples(webhook, ca_bundle, "gateway_yeeter_certificate_reloads_total")
    return sum(sample.value for sample in samples if sample.labels["result"] == "success")


def served_certificate_issuer(port: int, ca_bundle: bytes) -> x509.Name:
    """The issuer of the certificate a new TLS connection to 127.0.0.1:`port` is shown."""
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as connection,
        webhook_tls(ca_bundle).wrap_socket(connection, server_hostname=LOOPBACK) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer


def port_is_closed(port: int) -> bool:
    """Whether a connection to 127.0.0.1:`port` is refused: nothing listens there."""
    try:
        socket.create_connection((LOOPBACK, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def yeeted_pods(webhook: WebhookProcess) -> set[str]:
    """`namespace/name` of every pod whose default route the webhook's log says it removed."""
    return {f"{match[1]}/{match[2]}" for match in _YEETED_POD.finditer(webhook.log())}


# Creating pods in a loop


@dataclass
class Creation:
    """One pod create through the API server and how it went."""

    name: str
    seconds: float
    mutated: bool = False
    error: str | None = None


@dataclass
class CreationLoop:
    """Creates virt-v2v pods with a default route one after another, like a busy plan.

    Runs in a thread of its own, with its own client, until `limit` creates are done or
    `stop` is called; the test reads `creations` meanwhile.
    """

    cluster: LocalCluster
    namespace: str
    prefix: str
    limit: int
    creations: list[Creation] = field(init=False, default_factory=list)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)

    def run(self) -> None:
        client = self.cluster.client(namespace=self.namespace)
        try:
            for index in range(self.limit):
                if self._stop.is_set():
                    return
                self.creations.append(self._create(client, f"{self.prefix}-{index:04d}"))
        finally:
            client.close()

    def _create(self, client: Client, name: str) -> Creation:
        pod = pod_in(self.namespace, virt_v2v_pod(FORKLIFT_NETWORKS), name=name)
        started = time.perf_counter()
        try:
            created = client.create(pod)
        except (ApiError, httpx.HTTPError) as error:
            return Creation(name, time.perf_counter() - started, error=str(error))
        return Creation(name, time.perf_counter() - started, mutated=is_mutated(created))

    def start(self) -> CreationLoop:
        self._thread = threading.Thread(target=self.run, name=self.prefix, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the loop to end after the create in progress, and wait for it."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float = 60.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"{self.prefix} still creating after {timeout} s"

    def wait_for(self, count: int, *, timeout: float = 60.0) -> None:
        """Wait until `count` creates have finished (or the loop ended before)."""
        wait_until(
            lambda: len(self.creations) >= count or not self.running,
            what=f"{count} creates by {self.prefix}",
            timeout=timeout,
        )

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def failures(self) -> list[Creation]:
        return [creation for creation in self.creations if creation.error is not None]

    def unmutated(self) -> list[Creation]:
        return [c for c in self.creations if c.error is None and not c.mutated]
