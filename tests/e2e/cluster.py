"""A throwaway Kubernetes control plane on loopback for the end-to-end tests.

It runs a real etcd and a real kube-apiserver, nothing else: no controller-manager, scheduler
or kubelet. So pods stay Pending forever, a deleted namespace never finishes terminating, and
a new namespace gets no `default` ServiceAccount by itself, which the ServiceAccount admission
plugin needs before it lets a pod in (see `create_namespace`).

Every address the control plane listens on or dials is on 127.0.0.1, and proxy variables
are removed from its environment, so no test traffic leaves the machine. A webhook
for the API server to call is registered with a `url` clientConfig such as
`https://127.0.0.1:<port>/mutate` and a `caBundle` holding the webhook's CA; the API server
needs no extra flag for that.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lightkube import Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from gateway_yeeter.tls import issue_certificate_authority, issue_serving_certificate
from tests.webhook import die_with_parent

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BUILD_SCRIPT: Final = REPO_ROOT / "hack" / "kube-binaries.sh"

# The variables through which an admin points at binaries they already have; they win over
# the ones hack/kube-binaries.sh builds.
BINARY_OVERRIDES: Final[Mapping[str, str]] = {
    "kube-apiserver": "GATEWAY_YEETER_KUBE_APISERVER",
    "etcd": "GATEWAY_YEETER_ETCD",
    "kustomize": "GATEWAY_YEETER_KUSTOMIZE",
}

# A cold build of kube-apiserver takes many minutes on two cores; this only stops a hung one.
BUILD_TIMEOUT_SECONDS: Final = 45 * 60

LOOPBACK: Final = "127.0.0.1"
# The control plane lives for one test session; a day is plenty and never runs out mid-run.
CERTIFICATE_LIFETIME: Final = datetime.timedelta(days=1)
FIELD_MANAGER: Final = "gateway-yeeter-e2e"

# Pods never reach a network, so this range is only a pool the API server allocates Service
# addresses from; nothing is ever sent to it.
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"

_PROXY_VARIABLES: Final = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


class HarnessError(RuntimeError):
    """The local control plane could not be had; the message says why and what to do."""


# Binaries


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Where the etcd and kube-apiserver executables are."""

    kube_apiserver: Path
    etcd: Path


def locate_control_plane_binaries() -> ControlPlaneBinaries:
    """Find etcd and kube-apiserver: the override variables first, else build them (cached)."""
    located = _locate(["kube-apiserver", "etcd"])
    return ControlPlaneBinaries(kube_apiserver=located["kube-apiserver"], etcd=located["etcd"])


def locate_kustomize() -> Path:
    """Find kustomize, for rendering deploy/ on machines that have no kubectl."""
    return _locate(["kustomize"])["kustomize"]


def _locate(names: Sequence[str]) -> dict[str, Path]:
    located: dict[str, Path] = {}
    to_build: list[str] = []
    for name in names:
        variable = BINARY_OVERRIDES[name]
        override = os.environ.get(variable)
        if not override:
            to_build.append(name)
            continue

        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise HarnessError(f"{variable}={override} is not an executable file")
        located[name] = path.resolve()

    if to_build:
        located.update(_build(to_build))
    return located


def _build(names: Sequence[str]) -> dict[str, Path]:
    """Run hack/kube-binaries.sh, which returns at once for binaries it built before."""
    remedy = (
        "Install Go (see tools/kube/go.mod for the version) so that hack/kube-binaries.sh can"
        " build them, or point "
        + ", ".join(BINARY_OVERRIDES[name] for name in names)
        + " at existing binaries."
    )

    # The script's progress goes to our stderr, so pytest shows the build log of a failed
    # setup (and a running one with -s).
    try:
        completed = subprocess.run(
            ["bash", str(BUILD_SCRIPT), *names],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError as error:
        raise HarnessError(f"cannot run {BUILD_SCRIPT}: {error}. {remedy}") from error
    except subprocess.TimeoutExpired as error:
        raise HarnessError(
            f"{BUILD_SCRIPT.name} did not finish in {BUILD_TIMEOUT_SECONDS} s. {remedy}"
        ) from error
    if completed.returncode != 0:
        raise HarnessError(
            f"{BUILD_SCRIPT.name} {' '.join(names)} failed with exit code"
            f" {completed.returncode} (its log is in the captured stderr). {remedy}"
        )

    built: dict[str, Path] = {}
    for line in completed.stdout.splitlines():
        name, separator, path = line.partition("=")
        if separator and name in names:
            built[name] = Path(path)
    missing = [name for name in names if name not in built]
    if missing:
        raise HarnessError(f"{BUILD_SCRIPT.name} printed no path for {', '.join(missing)}")
    return built


# Certificates


@dataclass(frozen=True)
class IssuedCertificate:
    """A PEM certificate and its PEM private key."""

    certificate_pem: bytes
    private_key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write `<stem>.crt` and `<stem>.key` (owner-only) and return their paths."""
        certificate_path = directory / f"{stem}.crt"
        key_path = directory / f"{stem}.key"
        certificate_path.write_bytes(self.certificate_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.private_key_pem)
        return certificate_path, key_path


class CertificateAuthority:
    """A CA made at run time that issues short-lived serving and client certificates.

    The control plane has one; a test can make another for a webhook, whose certificate
    then goes into the webhook configuration's `caBundle`. The CA and its serving
    certificates are the webhook's own (`gateway_yeeter.tls`); only the client certificates,
    which nothing but the harness needs, are made here.
    """

    def __init__(self, common_name: str) -> None:
        self._certificate, self._key = issue_certificate_authority(
            common_name, valid_for=CERTIFICATE_LIFETIME
        )

    @property
    def certificate_pem(self) -> bytes:
        """The CA certificate, for a `caBundle`, a kubeconfig or `--client-ca-file`."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    def issue_serving_certificate(
        self,
        *,
        dns_names: Sequence[str] = ("localhost",),
        ip_addresses: Sequence[str] = (LOOPBACK,),
    ) -> IssuedCertificate:
        """A server certificate whose subject alternative names are the given hosts.

        The certificate file holds the chain: the leaf, then this CA.
        """
        chain, key = issue_serving_certificate(
            (self._certificate, self._key),
            [*dns_names, *ip_addresses],
            valid_for=CERTIFICATE_LIFETIME,
        )
        return IssuedCertificate(certificate_pem=chain, private_key_pem=key)

    def issue_client_certificate(
        self, *, user: str, groups: Sequence[str] = ()
    ) -> IssuedCertificate:
        """A client certificate the API server reads as `user` in `groups` (O= entries)."""
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        key = ec.generate_private_key(ec.SECP256R1())

        # Backdated a little so that a clock a few seconds apart never makes it "not yet valid".
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CERTIFICATE_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            private_key_pem=_private_key_pem(key),
        )


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# The control plane


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Another process could take it before the caller binds it; on this test machine that is
    rare enough that the harness does not retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class ControlPlaneFiles:
    """The certificates and keys that etcd and kube-apiserver are started with."""

    ca_certificate: Path
    serving_certificate: Path
    serving_key: Path
    admin_certificate: Path
    admin_key: Path
    service_account_signing_key: Path
    service_account_public_key: Path


def write_control_plane_files(
    authority: CertificateAuthority, directory: Path
) -> ControlPlaneFiles:
    """Issue the API server's serving certificate, an admin client and service-account keys."""
    directory.mkdir(parents=True, exist_ok=True)

    ca_certificate = directory / "ca.crt"
    ca_certificate.write_bytes(authority.certificate_pem)
    serving_certificate, serving_key = authority.issue_serving_certificate().write(
        directory, "apiserver"
    )

    # system:masters passes every authorizer, RBAC included, without any binding.
    admin_certificate, admin_key = authority.issue_client_certificate(
        user="gateway-yeeter-e2e-admin", groups=["system:masters"]
    ).write(directory, "admin")

    signing_key = ec.generate_private_key(ec.SECP256R1())
    service_account_signing_key = directory / "service-account.key"
    service_account_signing_key.touch(mode=0o600)
    service_account_signing_key.write_bytes(_private_key_pem(signing_key))
    service_account_public_key = directory / "service-account.pub"
    service_account_public_key.write_bytes(
        signing_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    return ControlPlaneFiles(
        ca_certificate=ca_certificate,
        serving_certificate=serving_certificate,
        serving_key=serving_key,
        admin_certificate=admin_certificate,
        admin_key=admin_key,
        service_account_signing_key=service_account_signing_key,
        service_account_public_key=service_account_public_key,
    )


def etcd_flags(*, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """The flags of a single-member etcd that listens on loopback only."""
    client_url = f"http://{LOOPBACK}:{client_port}"
    peer_url = f"http://{LOOPBACK}:{peer_port}"
    return [
        "--name=e2e",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=e2e={peer_url}",
        "--initial-cluster-state=new",
        # The data is thrown away after the run, so durability buys nothing and costs time.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_flags(
    *, files: ControlPlaneFiles, secure_port: int, etcd_url: str, cert_dir: Path
) -> list[str]:
    """The flags kube-apiserver is started with; the admission plugins are the defaults."""
    return [
        f"--bind-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        # The API server refuses to publish a loopback address in the `kubernetes` Endpoints,
        # and any other address would be one the tests must never reach; so publish none.
        f"--advertise-address={LOOPBACK}",
        "--endpoint-reconciler-type=none",
        f"--etcd-servers={etcd_url}",
        f"--tls-cert-file={files.serving_certificate}",
        f"--tls-private-key-file={files.serving_key}",
        # Only for certificates the API server would make itself; none are needed, but the
        # default folder is outside the test's temporary directory.
        f"--cert-dir={cert_dir}",
        f"--client-ca-file={files.ca_certificate}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={files.service_account_public_key}",
        f"--service-account-signing-key-file={files.service_account_signing_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--profiling=false",
    ]


class LoggedProcess:
    """A child process whose output goes to a log file, stopped by `stop`.

    The control plane runs in two of them; a test can run the webhook server in another.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        extra_environment: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        environment = _loopback_environment()
        environment.update(extra_environment or {})
        with log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                # Only pytest's main thread starts control planes, so the thread-safety hazard
                # of preexec_fn does not arise; it is the only way to set the death signal.
                preexec_fn=die_with_parent,  # noqa: PLW1509
            )

    def exit_code(self) -> int | None:
        return self._popen.poll()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def stop(self, grace_seconds: float = 15.0) -> None:
        """Ask the process to shut down, and kill it if it has not within the grace time."""
        if self._popen.poll() is not None:
            return
        self._popen.terminate()
        try:
            self._popen.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()


def _loopback_environment() -> dict[str, str]:
    # Go and Python clients already bypass a proxy for loopback addresses; a child should
    # not have to be trusted with that, so it gets no proxy to bypass.
    return {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}


def wait_until_ready(
    process: LoggedProcess,
    is_ready: Callable[[], bool],
    *,
    what: str,
    timeout_seconds: float,
) -> None:
    """Poll `is_ready` until it holds; raise HarnessError on the deadline or if `process` dies.

    `what` completes "<process> was not ..." in the error, e.g. "ready (/readyz)".
    """
    # Neither etcd nor kube-apiserver announces readiness other than through a health
    # endpoint, so polling is the only way; the process is checked on every round so that a
    # crash is reported at once, with its log, rather than at the deadline.
    deadline = time.monotonic() + timeout_seconds
    while True:
        exit_code = process.exit_code()
        if exit_code is not None:
            raise HarnessError(
                f"{process.name} exited with code {exit_code} before {what};"
                f" the end of its log ({process.log_path}):\n{process.log_tail()}"
            )
        if is_ready():
            return
        if time.monotonic() > deadline:
            raise HarnessError(
                f"{process.name} was not {what} after {timeout_seconds:.0f} s;"
                f" the end of its log:\n{process.log_tail()}"
            )
        time.sleep(0.2)


def _etcd_is_healthy(client_port: int) -> bool:
    connection = http.client.HTTPConnection(LOOPBACK, client_port, timeout=2)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = response.read()
        return response.status == 200 and json.loads(body).get("health") == "true"
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()


def loopback_https_ok(port: int, path: str, tls: ssl.SSLContext) -> bool:
    """Whether `GET https://127.0.0.1:<port><path>` answers 200 right now."""
    connection = http.client.HTTPSConnection(LOOPBACK, port, timeout=2, context=tls)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return response.status == 200


@dataclass(frozen=True)
class LocalCluster:
    """A running etcd and kube-apiserver, and what a test needs to talk to them."""

    server_url: str
    certificate_authority: CertificateAuthority
    files: ControlPlaneFiles
    apiserver_flags: tuple[str, ...]
    apiserver_log: Path
    etcd_log: Path

    def client(self, *, namespace: str | None = None, dry_run: bool = False) -> Client:
        """A lightkube client authenticated as the admin (system:masters)."""
        config = KubeConfig.from_one(
            cluster=Cluster(
                server=self.server_url, certificate_auth=str(self.files.ca_certificate)
            ),
            user=User(
                client_cert=str(self.files.admin_certificate),
                client_key=str(self.files.admin_key),
            ),
            namespace=namespace,
        )

        # trust_env=False keeps proxy variables away from loopback traffic.
        return Client(config=config, field_manager=FIELD_MANAGER, trust_env=False, dry_run=dry_run)

    def kubeconfig(self, *, namespace: str | None = None) -> dict[str, object]:
        """A self-contained admin kubeconfig (the certificates are embedded)."""
        context: dict[str, str] = {"cluster": "e2e", "user": "admin"}
        if namespace is not None:
            context["namespace"] = namespace
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": _base64_of(self.files.ca_certificate),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": _base64_of(self.files.admin_certificate),
                        "client-key-data": _base64_of(self.files.admin_key),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": context}],
            "current-context": "e2e",
        }

    def write_kubeconfig(self, path: Path, *, namespace: str | None = None) -> Path:
        """Write the admin kubeconfig (JSON, which every kubeconfig reader takes as YAML)."""
        path.touch(mode=0o600)
        path.write_text(json.dumps(self.kubeconfig(namespace=namespace), indent=2))
        return path

    def admin_tls_context(self) -> ssl.SSLContext:
        """TLS settings for talking to the API server directly, as the admin."""
        tls = ssl.create_default_context(cafile=str(self.files.ca_certificate))
        tls.load_cert_chain(str(self.files.admin_certificate), str(self.files.admin_key))
        return tls

    def apiserver_log_tail(self, lines: int = 60) -> str:
        """The last lines the API server logged, e.g. its complaints about a webhook call."""
        return _tail(self.apiserver_log, lines)


def _base64_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_cluster(
    binaries: ControlPlaneBinaries,
    *,
    extra_apiserver_flags: Sequence[str] = (),
    ready_timeout_seconds: float = 120.0,
) -> Iterator[LocalCluster]:
    """Start etcd and kube-apiserver in a temporary directory; stop both and remove it after.

    `extra_apiserver_flags` come after the harness's own, so a repeated flag overrides its
    value (for example `--admission-control-config-file=...` or `--v=4`). Raises HarnessError,
    with the end of the failing process's log, when either does not come up.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="gateway-yeeter-e2e-"))
    processes: list[LoggedProcess] = []
    try:
        authority = CertificateAuthority("gateway-yeeter-e2e-ca")
        files = write_control_plane_files(authority, work_dir / "pki")

        client_port, peer_port = free_loopback_port(), free_loopback_port()
        etcd = LoggedProcess(
            "etcd",
            [
                str(binaries.etcd),
                *etcd_flags(
                    data_dir=work_dir / "etcd", client_port=client_port, peer_port=peer_port
                ),
            ],
            work_dir / "etcd.log",
        )
        processes.append(etcd)
        wait_until_ready(
            etcd,
            lambda: _etcd_is_healthy(client_port),
            what="healthy",
            timeout_seconds=ready_timeout_seconds,
        )

        secure_port = free_loopback_port()
        flags = apiserver_flags(
            files=files,
            secure_port=secure_port,
            etcd_url=f"http://{LOOPBACK}:{client_port}",
            cert_dir=work_dir / "apiserver-certs",
        )
        flags += extra_apiserver_flags
        apiserver = LoggedProcess(
            "kube-apiserver", [str(binaries.kube_apiserver), *flags], work_dir / "apiserver.log"
        )
        processes.append(apiserver)
        cluster = LocalCluster(
            server_url=f"https://{LOOPBACK}:{secure_port}",
            certificate_authority=authority,
            files=files,
            apiserver_flags=tuple(flags),
            apiserver_log=apiserver.log_path,
            etcd_log=etcd.log_path,
        )
        tls = cluster.admin_tls_context()
        wait_until_ready(
            apiserver,
            lambda: loopback_https_ok(secure_port, "/readyz", tls),
            what="ready (/readyz)",
            timeout_seconds=ready_timeout_seconds,
        )

        yield cluster
    finally:
        # The API server first, so that it does not spend its shutdown retrying a gone etcd.
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


# Namespaces


def create_namespace(client: Client, name: str) -> str:
    """Create a namespace and its `default` ServiceAccount, as kube-controller-manager would.

    Without that ServiceAccount the ServiceAccount admission plugin rejects every pod.
    """
    client.create(Namespace(metadata=ObjectMeta(name=name)))
    client.create(
        ServiceAccount(metadata=ObjectMeta(name="default", namespace=name)), namespace=name
    )
    return name
