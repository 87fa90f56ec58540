"""The webhook process over real TLS, called the way kube-apiserver calls it."""

from __future__ import annotations

import copy
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway_yeeter.config import MAX_BODY_BYTES
from tests.certs import SERVICE_NAME, Authority, SecretVolume
from tests.conftest import StartWebhook
from tests.pods import (
    NETWORKS,
    cdi_importer_pod,
    inspection_pod,
    review,
    review_bytes,
    unrelated_pod,
    virt_v2v_pod,
)
from tests.webhook import SNI, WebhookProcess, apiserver_client, apply_answer, post_review


@pytest.fixture
def webhook(start_webhook: StartWebhook, authority: Authority) -> httpx.Client:
    process = start_webhook()
    with apiserver_client(process.url, authority.ca_file) as client:
        client.process = process  # type: ignore[attr-defined]
        yield client  # type: ignore[misc]


def without_annotations(pod: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(pod)
    stripped["metadata"].pop("annotations", None)
    return stripped


@pytest.mark.parametrize(
    "pod",
    [virt_v2v_pod(), inspection_pod(), cdi_importer_pod()],
    ids=["virt-v2v", "inspection", "cdi-importer"],
)
@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_migration_pods_come_back_without_the_default_route(
    webhook: httpx.Client, pod: dict[str, Any], api_version: str
) -> None:
    sent = review(pod, api_version=api_version)

    response = post_review(webhook, orjson.dumps(sent))

    assert response.status_code == 200
    answer = response.json()
    assert answer["apiVersion"] == api_version
    assert set(answer) == {"apiVersion", "kind", "response"}
    assert answer["response"]["uid"] == sent["request"]["uid"]
    assert answer["response"]["allowed"] is True
    patched = apply_answer(answer, copy.deepcopy(pod))
    assert json.loads(patched["metadata"]["annotations"][NETWORKS]) == [
        {"name": "transfer-l2", "namespace": "openshift-mtv"}
    ]
    assert without_annotations(patched) == without_annotations(pod)


@pytest.mark.parametrize(
    "pod",
    [unrelated_pod(), cdi_importer_pod(forklift=False), virt_v2v_pod(networks=None),
     virt_v2v_pod("openshift-mtv/transfer-l2")],
    ids=["unrelated", "importer-outside-forklift", "no-annotation", "shorthand"],
)
def test_pods_with_nothing_to_do_get_no_patch(webhook: httpx.Client, pod: dict[str, Any]) -> None:
    response = post_review(webhook, review_bytes(pod))

    assert response.status_code == 200
    assert set(response.json()["response"]) == {"uid", "allowed"}


def test_an_unparsable_annotation_is_allowed_with_a_warning(webhook: httpx.Client) -> None:
    response = post_review(webhook, review_bytes(virt_v2v_pod('{"name":"transfer-l2"}')))

    answer = response.json()["response"]
    assert answer["allowed"] is True
    assert "patch" not in answer
    assert len(answer["warnings"]) == 1
    assert len(answer["warnings"][0]) < 120


def test_a_name_the_certificate_lacks_fails_verification(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    process = start_webhook()

    with apiserver_client(process.url, authority.ca_file) as client, pytest.raises(
        httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"
    ):
        client.get("/healthz", extensions={"sni_hostname": "elsewhere.example"})


def test_probes_answer(webhook: httpx.Client) -> None:
    assert webhook.get("/healthz", extensions=SNI).status_code == 200
    assert webhook.get("/readyz", extensions=SNI).status_code == 200
    assert webhook.get("/nowhere", extensions=SNI).status_code == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b'{"apiVersion":"v1","kind":"Pod"}', "not an AdmissionReview"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "no request"),
        (b"", "not JSON"),
    ],
    ids=["not-json", "not-a-review", "no-request", "empty"],
)
def test_bad_bodies_get_400_with_the_reason(
    webhook: httpx.Client, body: bytes, fragment: str
) -> None:
    response = post_review(webhook, body)

    assert response.status_code == 400
    assert fragment in response.text


def test_wrong_method_gets_405(webhook: httpx.Client) -> None:
    response = webhook.get("/mutate", extensions=SNI)

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_body_over_the_limit_gets_413(webhook: httpx.Client) -> None:
    response = post_review(webhook, b" " * (MAX_BODY_BYTES + 1))

    assert response.status_code == 413


def test_a_review_near_the_limit_is_answered(webhook: httpx.Client) -> None:
    # The largest object the API server stores is 3 MiB; a review with one that size and an
    # old object of the same size must still be read.
    pod = virt_v2v_pod()
    pod["metadata"]["annotations"]["example.com/padding"] = "p" * (3 * 1024 * 1024 - 4096)
    sent = review(pod)
    old = copy.deepcopy(pod)
    sent["request"]["oldObject"] = old
    # Fill the rest of the envelope, short of the limit by a few KiB.
    spare = MAX_BODY_BYTES - len(orjson.dumps(sent)) - 4096
    old["metadata"]["annotations"]["example.com/more-padding"] = "q" * spare
    body = orjson.dumps(sent)
    assert MAX_BODY_BYTES - 8192 < len(body) < MAX_BODY_BYTES

    response = post_review(webhook, body)

    assert response.status_code == 200
    patched = apply_answer(response.json(), copy.deepcopy(pod))
    assert "default-route" not in patched["metadata"]["annotations"][NETWORKS]


def test_each_decision_is_logged_with_the_word_runbooks_grep_for(
    webhook: httpx.Client,
) -> None:
    sent = review(virt_v2v_pod(), uid="5b2f0c55-0d8e-4b7e-9a53-3f4f0a1c2b3d")

    post_review(webhook, orjson.dumps(sent))
    post_review(webhook, review_bytes(unrelated_pod()))

    log = webhook.process.log()  # type: ignore[attr-defined]
    yeeting = [line for line in log.splitlines() if "YEETING" in line]
    assert len(yeeting) == 1
    line = yeeting[0]
    for fact in ("5b2f0c55-0d8e-4b7e-9a53-3f4f0a1c2b3d", "vm-migrations/warehouse-db-vm-2041-*",
                 "virt-v2v", "openshift-mtv/transfer-l2", "192.168.50.1"):
        assert fact in line
    assert "labels match no migration pod selector" in log


def test_json_logs_carry_the_decision_as_fields(
    start_webhook: StartWebhook, authority: Authority
) -> None:
    process = start_webhook("--log-format", "json")
    with apiserver_client(process.url, authority.ca_file) as client:
        post_review(client, review_bytes(virt_v2v_pod(), uid="u-1"))

    records = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    decision = next(record for record in records if record.get("uid") == "u-1")
    assert decision["level"] == "INFO"
    assert "YEETING" in decision["message"]
    assert decision["outcome"] == "mutated"
    assert decision["pod_kind"] == "virt-v2v"
    assert decision["namespace"] == "vm-migrations"
    assert decision["generate_name"] == "warehouse-db-vm-2041-"


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway_yeeter", "serve", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_missing_certificate_file_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    result = run_serve("--tls-cert-file", str(tmp_path / "absent.crt"),
                       "--tls-private-key-file", str(tmp_path / "absent.key"))

    assert result.returncode == 2
    assert str(tmp_path / "absent.crt") in result.stderr


def test_a_mismatched_pair_stops_start_up(tmp_path: Path, authority: Authority) -> None:
    cert, _ = authority.issue()
    _, other_key = authority.issue()
    volume = SecretVolume(tmp_path / "certs")
    volume.write(cert, other_key)

    result = run_serve("--tls-cert-file", str(volume.cert_file),
                       "--tls-private-key-file", str(volume.key_file))

    assert result.returncode == 2
    assert "not a matching certificate and key" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["--secure-port", "70000"], {}, "--secure-port"),
        ([], {"GATEWAY_YEETER_SECURE_PORT": "not-a-port"}, "GATEWAY_YEETER_SECURE_PORT"),
        (["--shutdown-delay", "soon"], {}, "not a duration"),
        (["--cdi-importer-selector", "app in ()"], {}, "needs values"),
        (["--networks", "just-a-name"], {}, "is not namespace/name"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--header-timeout", "0s"], {}, "outside 100ms to 300s"),
        (["--cert-reload-interval", "0"], {}, "--cert-reload-interval"),
        (["--shutdown-delay", "1h"], {}, "outside 0s to 300s"),
        (["--bind-address", "999.1.1.1"], {}, "not an IP address"),
        (["--networks", ","], {}, "names no network"),
        (["--virt-v2v-selector", " "], {}, "--virt-v2v-selector"),
        (["--inspection-selector", "a in b"], {}, "--inspection-selector"),
    ],
)
def test_bad_flags_stop_start_up_with_a_clear_error(
    args: list[str], env: dict[str, str], fragment: str
) -> None:
    result = run_serve(*args, env=env)

    assert result.returncode == 2
    assert fragment in result.stderr


def test_flags_can_come_from_the_environment(
    tmp_path: Path, secret_volume: SecretVolume, authority: Authority
) -> None:
    env = {**os.environ,
           "GATEWAY_YEETER_TLS_CERT_FILE": str(secret_volume.cert_file),
           "GATEWAY_YEETER_TLS_PRIVATE_KEY_FILE": str(secret_volume.key_file),
           "GATEWAY_YEETER_NETWORKS": "openshift-mtv/another-network"}
    with WebhookProcess(tmp_path / "env.log", env=env) as process, apiserver_client(
        process.url, authority.ca_file
    ) as client:
        response = post_review(client, review_bytes(virt_v2v_pod()))

    # The named-networks setting from the environment spared the transfer network.
    assert "patch" not in response.json()["response"]


def test_self_signed_mode_writes_a_ca_that_trusts_the_server(tmp_path: Path) -> None:
    with WebhookProcess(tmp_path / "self.log", "--self-signed", "--self-signed-dir",
                        str(tmp_path / "self")) as process:
        ca_file = tmp_path / "self" / "ca.crt"
        assert f"curl --cacert {ca_file}" in process.log()
        with httpx.Client(verify=ssl.create_default_context(cafile=ca_file)) as client:
            local = client.get(f"https://localhost:{process.port}/readyz")
        with apiserver_client(process.url, ca_file) as client:
            in_cluster = client.get("/readyz", extensions={"sni_hostname": SERVICE_NAME})

    assert local.status_code == 200
    assert in_cluster.status_code == 200


def test_a_port_in_use_stops_start_up_naming_the_flags(
    start_webhook: StartWebhook, secret_volume: SecretVolume
) -> None:
    running = start_webhook()

    result = run_serve("--bind-address", "127.0.0.1", "--secure-port", str(running.port),
                       "--tls-cert-file", str(secret_volume.cert_file),
                       "--tls-private-key-file", str(secret_volume.key_file))

    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1 port" in result.stderr
    assert "--secure-port" in result.stderr


def test_an_unwritable_self_signed_folder_stops_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    result = run_serve("--self-signed", "--self-signed-dir", str(blocker / "certs"))

    assert result.returncode == 2
    assert "cannot create" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_body_nested_too_deeply_gets_400(webhook: httpx.Client) -> None:
    body = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":' + (
        b"[" * 5000 + b"]" * 5000 + b"}"
    )

    response = post_review(webhook, body)

    assert response.status_code == 400
    assert "Traceback" not in webhook.process.log()  # type: ignore[attr-defined]
