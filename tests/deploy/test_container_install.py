"""The image, without a container engine: the Containerfile's own install steps, then a run.

The Containerfile builds and installs through hack/install-wheel.sh; this test runs that
script the same way, with the same lockfile, into a fresh virtual environment. It then starts
the server with the Deployment's arguments and the image's environment, as UID 1001, with the
whole root filesystem read-only where the kernel lets us mount one (else with a read-only
working directory and home), and talks to it as the API server would.

Only the interpreter differs from the image: the environment is based on a Python 3.11+ that
UID 1001 can run here, where the image uses /usr/bin/python3.11. Root runs the tests, so
root builds; the server runs unprivileged.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
import pytest

from tests.certs import SERVING_NAMES, SecretVolume, new_authority
from tests.deploy.containerfile import Stage, parse_containerfile
from tests.deploy.manifests import REPO_ROOT, Rendered, serve_flags
from tests.pods import NETWORKS, review_bytes, virt_v2v_pod
from tests.webhook import SNI, apiserver_client, apply_answer, post_review

CONTAINERFILE = REPO_ROOT / "Containerfile"
INSTALL_SCRIPT = REPO_ROOT / "hack" / "install-wheel.sh"
LOCK_FILE = REPO_ROOT / "requirements.lock"
IMAGE_USER = 1001
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_TIMEOUT_SECONDS = 15 * 60

_LISTENING = re.compile(r"listening on https://[^:]+:(\d+)")
_PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[0-9][0-9A-Za-z.!+-]*$")


def _stages() -> tuple[Stage, Stage]:
    _, stages = parse_containerfile(CONTAINERFILE)
    assert len(stages) == 2, "a build stage and a runtime stage"
    return stages[0], stages[1]


def _script_call(stage: Stage, command: str) -> list[str]:
    """The arguments after `install-wheel.sh <command>` in the stage's RUN lines."""
    for run in stage.all("RUN"):
        words = shlex.split(run.arguments)
        for index, word in enumerate(words[:-1]):
            if word.endswith("install-wheel.sh") and words[index + 1] == command:
                return words[index + 2:index + 5]
    raise AssertionError(f"stage {stage.name or 'final'} does not run install-wheel.sh {command}")


def _image_venv() -> Path:
    _, runtime = _stages()
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    return Path(entrypoint[0]).parents[1]


def test_containerfile_builds_on_ubi9_python_311_through_the_install_script() -> None:
    build, runtime = _stages()

    assert build.base == runtime.base == "registry.access.redhat.com/ubi9/python-311"
    assert _script_call(build, "build")[0] == "."
    venv, _, lock = _script_call(runtime, "install")
    assert Path(venv) == _image_venv()
    assert Path(lock).name == LOCK_FILE.name


def test_image_runs_the_deployments_command_as_a_numeric_non_root_user(
    openshift: Rendered,
) -> None:
    _, runtime = _stages()
    entrypoint = runtime.last("ENTRYPOINT").exec_form()

    # runAsNonRoot can only verify a numeric USER.
    assert runtime.users()[-1] == str(IMAGE_USER)
    assert Path(entrypoint[0]).name == "gateway-yeeter"
    assert runtime.last("CMD").exec_form() == ["serve"]
    assert openshift.container["args"][0] == "serve"
    assert "command" not in openshift.container
    assert runtime.last("EXPOSE").arguments == str(openshift.container["ports"][0]["containerPort"])
    assert runtime.environment()["PYTHONDONTWRITEBYTECODE"] == "1"


def test_lockfile_pins_every_package_to_one_version() -> None:
    requirements = [
        line.strip() for line in LOCK_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    assert requirements
    for requirement in requirements:
        assert _PINNED.match(requirement), requirement
    names = [requirement.split("==")[0].lower().replace("_", "-") for requirement in requirements]
    assert "gateway-yeeter" not in names
    assert len(names) == len(set(names))


def test_build_context_holds_what_the_containerfile_copies() -> None:
    ignore = (REPO_ROOT / ".containerignore").read_text().splitlines()
    included = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    build, runtime = _stages()

    for stage in (build, runtime):
        for copy in stage.all("COPY"):
            words = copy.arguments.split()
            if any(word.startswith("--from=") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            for source in paths[:-1]:
                assert source.rstrip("/") in included, source
                assert (REPO_ROOT / source).exists(), source


# Installing and running.


@dataclass
class Installed:
    root: Path
    venv: Path
    environment: dict[str, str]


def _as_image_user(*command: str) -> list[str]:
    return ["setpriv", f"--reuid={IMAGE_USER}", f"--regid={IMAGE_USER}", "--clear-groups",
            "--", *command]


def _cannot_run(reason: str) -> NoReturn:
    # CI must run this test, so there a missing prerequisite is a failure; a developer's
    # machine without root may skip it.
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _interpreter_for_image_user() -> str:
    """A Python 3.11+ with venv that UID 1001 can run; the environment will point at it."""
    base: str = getattr(sys, "_base_executable", sys.executable)
    candidates = [base, "/usr/bin/python3.11", shutil.which("python3.11"), shutil.which("python3")]
    probe = "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))"
    for candidate in candidates:
        if not candidate:
            continue
        completed = subprocess.run(_as_image_user(candidate, "-c", probe),
                                   capture_output=True, check=False, cwd="/")
        if completed.returncode == 0:
            return candidate
    _cannot_run(f"no Python 3.11+ with venv that UID {IMAGE_USER} can run among {candidates}")


def _run_script(*arguments: str, python: str) -> None:
    completed = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), *arguments],
        env={**os.environ, "PYTHON": python, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS, check=False,
    )
    assert completed.returncode == 0, (
        f"install-wheel.sh {arguments[0]} failed:\n{completed.stdout[-3000:]}\n"
        f"{completed.stderr[-3000:]}"
    )


def _image_environment(venv: Path, home: Path) -> dict[str, str]:
    """The final stage's ENV, with the image's venv path moved to the test's."""
    _, runtime = _stages()
    environment = {"HOME": str(home), "LANG": "C.UTF-8"}
    for name, written in runtime.environment().items():
        value = written.replace("${PATH}", SYSTEM_PATH).replace("$PATH", SYSTEM_PATH)
        environment[name] = value.replace(str(_image_venv()), str(venv))
    return environment


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        _cannot_run("needs root and setpriv, to run the server as the image's UID 1001")
    python = _interpreter_for_image_user()

    # Outside pytest's tmp_path, which is private to root; UID 1001 must read what is here.
    root = Path(tempfile.mkdtemp(prefix="gateway-yeeter-image-"))
    root.chmod(0o755)
    try:
        # The build stage's context: what the Containerfile copies into it.
        context = root / "context"
        context.mkdir()
        shutil.copy2(REPO_ROOT / "pyproject.toml", context)
        shutil.copytree(REPO_ROOT / "src", context / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        _run_script("build", str(context), str(root / "dist"), python=sys.executable)

        venv = root / _image_venv().relative_to("/")
        _run_script("install", str(venv), str(root / "dist"), str(LOCK_FILE), python=python)

        home = root / "home"
        home.mkdir(mode=0o555)
        home.chmod(0o555)
        yield Installed(root=root, venv=venv, environment=_image_environment(venv, home))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_only_root_available() -> bool:
    completed = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                               capture_output=True, check=False)
    return completed.returncode == 0


# Mounts / again, read-only, in a private mount namespace and runs the command inside it:
# what readOnlyRootFilesystem gives the container.
_READ_ONLY_ROOT = """
set -eu
new_root="$1"; workdir="$2"; shift 2
mount --rbind / "$new_root"
mount -o remount,bind,ro "$new_root"
exec chroot "$new_root" /bin/sh -c 'cd "$0" && exec "$@"' "$workdir" "$@"
"""


def _sandboxed(installed: Installed, workdir: Path, *command: str) -> list[str]:
    unprivileged = _as_image_user(*command)
    if not _read_only_root_available():
        return unprivileged
    new_root = installed.root / "read-only-root"
    new_root.mkdir(exist_ok=True)
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            _READ_ONLY_ROOT, "read-only-root", str(new_root), str(workdir), *unprivileged]


def _log_records(log_file: Path) -> list[dict[str, Any]]:
    records = []
    for line in log_file.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"level": "RAW", "message": line})
    return records


def _wait_for_port(process: subprocess.Popen[bytes], log_file: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = _LISTENING.search(log_file.read_text(errors="replace"))
        if match:
            return int(match[1])
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n"
                                 f"{log_file.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"server did not listen:\n{log_file.read_text(errors='replace')}")


def _resident_mebibytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _quantity_mebibytes(quantity: str) -> float:
    assert quantity.endswith("Mi"), quantity
    return float(quantity[:-2])


def _serve_arguments(rendered: Rendered, volume: SecretVolume) -> list[str]:
    """The container's args with the certificate paths moved and a free loopback port."""
    replaced = {
        "--tls-cert-file": str(volume.cert_file),
        "--tls-private-key-file": str(volume.key_file),
    }
    arguments = []
    for argument in rendered.container["args"]:
        flag, separator, _ = argument.partition("=")
        arguments.append(f"{flag}={replaced[flag]}" if separator and flag in replaced
                         else argument)
    assert all(any(argument.startswith(flag) for argument in arguments) for flag in replaced)
    return [*arguments, "--bind-address=127.0.0.1", "--secure-port=0"]


def test_sandbox_refuses_writes(installed: Installed) -> None:
    # Without this, the run below would prove nothing about writes.
    workdir = installed.root / "probe-workdir"
    workdir.mkdir(mode=0o555, exist_ok=True)
    workdir.chmod(0o555)
    targets = [workdir / "probe", installed.venv / "probe"]
    if _read_only_root_available():
        targets.append(Path(tempfile.gettempdir()) / "gateway-yeeter-probe")

    for target in targets:
        completed = subprocess.run(
            _sandboxed(installed, workdir, "/bin/sh", "-c", f"echo x > {shlex.quote(str(target))}"),
            capture_output=True, env=installed.environment, check=False,
        )
        assert completed.returncode != 0, f"{target} was writable"
        assert not target.exists()


def test_installed_image_serves_as_non_root_on_a_read_only_filesystem(
    installed: Installed, openshift: Rendered
) -> None:
    authority = new_authority(installed.root, "image test CA")
    volume = SecretVolume(installed.root / "certs")
    volume.write(*authority.issue(SERVING_NAMES))
    workdir = installed.root / "workdir"
    workdir.mkdir(mode=0o555)
    workdir.chmod(0o555)
    log_file = installed.root / "server.log"
    entrypoint = installed.venv / "bin" / "gateway-yeeter"
    command = _sandboxed(installed, workdir, str(entrypoint),
                         *_serve_arguments(openshift, volume))

    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env=installed.environment, cwd=workdir)
    try:
        port = _wait_for_port(process, log_file)
        url = f"https://127.0.0.1:{port}"
        pod = virt_v2v_pod()

        with apiserver_client(url, authority.ca_file) as client:
            ready = client.get("/readyz", extensions=SNI)
            answered = post_review(client, review_bytes(pod))

        assert ready.status_code == 200
        assert answered.status_code == 200
        edited = apply_answer(orjson.loads(answered.content), pod)
        assert "default-route" not in edited["metadata"]["annotations"][NETWORKS]
        assert "gateway.yeet/removed-default-routes" in edited["metadata"]["annotations"]

        # What the Deployment's memory request and limit rest on.
        resident = _resident_mebibytes(process.pid)
        limits = openshift.container["resources"]["limits"]
        assert resident < _quantity_mebibytes(limits["memory"]), f"{resident:.0f} MiB resident"

        flags = serve_flags(openshift)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(flags["shutdown_delay"] + flags["shutdown_timeout"] + 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    records = _log_records(log_file)
    assert exit_code == 0, log_file.read_text()
    assert all(record.get("level") in {"INFO", "WARNING"} for record in records), records
    assert any("YEETING" in record.get("message", "") for record in records)
    assert any(record.get("message") == "stopped" for record in records)
