"""Fixtures for the end-to-end tests: one etcd and kube-apiserver for the whole session.

These tests never skip for want of binaries: when etcd or kube-apiserver cannot be found or
built, every test that needs them fails with the reason. Deselect them with `-m "not e2e"`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from lightkube import Client

from tests.certs import Authority
from tests.conftest import StartWebhook
from tests.webhook import WebhookProcess

from .cluster import (
    ControlPlaneBinaries,
    HarnessError,
    LocalCluster,
    create_namespace,
    locate_control_plane_binaries,
    locate_kustomize,
    running_cluster,
)
from .latency import REPORT as LATENCY_REPORT
from .webhook_setup import (
    DEPLOY_DIR,
    MUTATE_PATH,
    Manifest,
    pointed_at_loopback,
    registered_webhooks,
    render,
    unique_name,
    webhook_configuration_of,
)

_E2E_DIRECTORY = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: runs against a real etcd and kube-apiserver started on loopback"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test in this folder is end-to-end, whether or not its module says so.
    for item in items:
        if _E2E_DIRECTORY in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A webhook that failed or was skipped mostly shows in the API server's log, which lives
    # in a directory removed at the end of the session; attach its end to the failure.
    report = yield
    if report.failed and call.when == "call" and isinstance(item, pytest.Function):
        cluster = item.funcargs.get("local_cluster")
        if isinstance(cluster, LocalCluster):
            report.sections.append(("kube-apiserver log (end)", cluster.apiserver_log_tail()))
        webhook = item.funcargs.get("deployed_webhook")
        if isinstance(webhook, WebhookProcess):
            tail = "\n".join(webhook.log().splitlines()[-40:])
            report.sections.append(("webhook log (end)", tail))
    return report


def _failure(message: str) -> BaseException:
    # What pytest.fail raises, built here so that the HarnessError behind it can be left out
    # of the report (`from None`): the message already says all of it.
    return pytest.fail.Exception(message, pytrace=False)


@pytest.fixture(scope="session")
def control_plane_binaries() -> ControlPlaneBinaries:
    try:
        return locate_control_plane_binaries()
    except HarnessError as error:
        raise _failure(f"no etcd/kube-apiserver for the e2e tests: {error}") from None


@pytest.fixture(scope="session")
def kustomize_binary() -> Path:
    try:
        return locate_kustomize()
    except HarnessError as error:
        raise _failure(f"no kustomize for the e2e tests: {error}") from None


@pytest.fixture(scope="session")
def local_cluster(control_plane_binaries: ControlPlaneBinaries) -> Iterator[LocalCluster]:
    try:
        with running_cluster(control_plane_binaries) as cluster:
            yield cluster
    except HarnessError as error:
        raise _failure(f"the e2e control plane did not start: {error}") from None


@pytest.fixture(scope="session")
def kube_client(local_cluster: LocalCluster) -> Iterator[Client]:
    """A lightkube client authenticated as system:masters."""
    client = local_cluster.client()
    yield client
    client.close()


@pytest.fixture
def namespace(kube_client: Client, request: pytest.FixtureRequest) -> str:
    """A new namespace, with its `default` ServiceAccount, named after the test.

    It is not deleted afterwards: with no namespace controller running it would stay
    Terminating anyway, and the whole control plane goes away at the end of the session.
    """
    return create_namespace(kube_client, _namespace_name(request.node.name))


def _namespace_name(test_name: str) -> str:
    # A DNS label: lowercase alphanumerics and '-', at most 63 characters, unique per call.
    stem = re.sub(r"[^a-z0-9]+", "-", test_name.lower().removeprefix("test_")).strip("-")
    return f"e2e-{stem[:48].rstrip('-')}-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def deploy_configuration(kustomize_binary: Path) -> Manifest:
    """The MutatingWebhookConfiguration as `kustomize build deploy/` renders it."""
    return webhook_configuration_of(render(kustomize_binary, DEPLOY_DIR))


@pytest.fixture
def deployed_webhook(
    start_webhook: StartWebhook,
    authority: Authority,
    kube_client: Client,
    namespace: str,
    deploy_configuration: Manifest,
) -> Iterator[WebhookProcess]:
    """A webhook process that the API server calls through deploy/'s configuration."""
    webhook = start_webhook()
    configuration = pointed_at_loopback(
        deploy_configuration,
        name=unique_name("gateway-yeeter"),
        url=webhook.url + MUTATE_PATH,
        ca_bundle=authority.ca_file.read_bytes(),
    )
    with registered_webhooks(kube_client, configuration, probe_namespace=namespace):
        yield webhook


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(LATENCY_REPORT, None)
    if lines:
        terminalreporter.section("pod-create latency through kube-apiserver")
        for line in lines:
            terminalreporter.write_line(line)
