"""Running ``gateway-yeeter serve`` as a real process, and calling it as kube-apiserver does."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import jsonpatch
import orjson

from tests.certs import SERVICE_NAME

_LISTENING = re.compile(r"listening on https://[^:]+:(\d+)")
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: Linux ends it when the test run dies without teardown."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WebhookProcess:
    """A webhook server process on loopback; its log goes to a file the test can read."""

    def __init__(self, log_file: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_file = log_file
        command = [sys.executable, "-m", "gateway_yeeter", "serve",
                   "--bind-address", "127.0.0.1", "--secure-port", "0", *args]
        self._log = log_file.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, preexec_fn=die_with_parent)  # noqa: PLW1509
        self.port = self._wait_listening()

    def _wait_listening(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                return int(match[1])
            if self.process.poll() is not None:
                raise RuntimeError(f"webhook exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"webhook did not listen within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def signal(self, number: int = signal.SIGTERM) -> None:
        self.process.send_signal(number)

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def __enter__(self) -> WebhookProcess:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def apiserver_tls(ca_file: Path) -> ssl.SSLContext:
    """Verify the server as kube-apiserver does: against caBundle, by the service DNS name."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def apiserver_client(url: str, ca_file: Path, **kwargs: Any) -> httpx.Client:
    """An HTTP/1.1 keep-alive client that dials loopback but checks the cert for the service."""
    return httpx.Client(base_url=url, verify=apiserver_tls(ca_file), http2=False,
                        timeout=10.0, **kwargs)


SNI = {"sni_hostname": SERVICE_NAME}


def post_review(client: httpx.Client, body: bytes, **kwargs: Any) -> httpx.Response:
    return client.post("/mutate?timeout=10s", content=body, extensions=SNI,
                       headers={"content-type": "application/json"}, **kwargs)


def apply_answer(answer: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    """Apply the response's patch to the pod as kube-apiserver would; unchanged without one."""
    response = answer["response"]
    assert ("patch" in response) == ("patchType" in response)
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    operations = orjson.loads(base64.b64decode(response["patch"], validate=True))
    return jsonpatch.JsonPatch(operations).apply(pod)  # type: ignore[no-any-return]
