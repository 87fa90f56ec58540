"""Benchmark of ``gateway-yeeter serve``: throughput, latency, CPU per admission, memory, start-up.

The server runs as its own process with generated certificates and is driven over TLS with
keep-alive by wrk, a load tool in a separate process, so that the figures are the server's and
not a Python client's. For each payload a fresh server is started and loaded at each
concurrency for a fixed time; its CPU time is read from /proc before and after each run, and its
peak RSS at the end. A small httpx run then checks that every answer is a correct mutation,
which wrk cannot do. Everything goes to 127.0.0.1 only.

Run it with ``.venv/bin/python bench/run.py``; ``--help`` lists the knobs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from tests.pods import review, virt_v2v_pod  # noqa: E402
from tests.webhook import apply_answer  # noqa: E402

from gateway_yeeter.networks import NETWORKS_ANNOTATION  # noqa: E402
from gateway_yeeter.tls import write_self_signed  # noqa: E402

LOOPBACK = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MUTATE_URL = "/mutate?timeout=10s"
LISTENING = "listening on https://"


# --- Payloads -------------------------------------------------------------------------------


def forklift_review() -> dict[str, Any]:
    """A virt-v2v conversion pod's review as Forklift's controller causes it: a few KB."""
    return review(virt_v2v_pod())


def large_review(target_bytes: int = 1024 * 1024) -> dict[str, Any]:
    """A virt-v2v review padded to about ``target_bytes`` with environment variables.

    Many small objects, not one long string: the harder case for the JSON decoder.
    """
    pod = virt_v2v_pod()
    environment = pod["spec"]["containers"][0]["env"]
    entry_size = len(orjson.dumps({"name": "MIGRATION_SETTING_00000", "value": "v" * 64})) + 1
    for index in range(target_bytes // entry_size):
        environment.append({"name": f"MIGRATION_SETTING_{index:05d}", "value": "v" * 64})
    return review(pod)


PAYLOADS = {"virt-v2v review": forklift_review, "1 MB pod": large_review}


# --- The server process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def server_command() -> list[str]:
    # The console script is what a container runs; fall back to the module if it is missing.
    script = Path(sys.executable).with_name("gateway-yeeter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway_yeeter"]


@dataclass
class Certificates:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


class ServerProcess:
    """A server process whose log goes to a file and whose /proc entry is read for costs."""

    def __init__(self, command: Sequence[str], log_file: Path) -> None:
        self.log_file = log_file
        self._log = log_file.open("wb")
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far, from /proc/<pid>/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        # Fields 14 and 15 of stat(5), counted from the state field, which is field 3.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def memory_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def serve_command(certificates: Certificates, port: int, log_level: str) -> list[str]:
    return [
        *server_command(), "serve",
        "--bind-address", LOOPBACK, "--secure-port", str(port),
        "--tls-cert-file", str(certificates.cert_file),
        "--tls-private-key-file", str(certificates.key_file),
        "--shutdown-delay", "0s", "--log-level", log_level,
    ]


def readyz_ok(port: int, context: ssl.SSLContext) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as connection:
            connection.sendall(b"GET /readyz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            return connection.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_ready(server: ServerProcess, port: int, context: ssl.SSLContext,
               timeout: float = 20.0) -> float:
    """Poll /readyz until it answers 200; seconds from process start to that answer."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if readyz_ok(port, context):
            return time.perf_counter() - server.started_at
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        time.sleep(0.002)
    raise RuntimeError(f"server not ready within {timeout}s:\n{server.log()}")


# --- Load with wrk --------------------------------------------------------------------------


@dataclass
class LoadRun:
    payload: str
    body_bytes: int
    concurrency: int
    threads: int
    seconds: float
    processes: int
    requests: int = 0
    throughput: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_seconds: float = 0.0
    cpu_seconds_per_1000: float = 0.0
    admissions_per_cpu_second: float = 0.0
    load_tool_cpu_seconds: float = 0.0
    peak_rss_mib_so_far: float = 0.0
    steal_seconds: float = 0.0
    """CPU time the hypervisor gave to other guests during the run: noise in every figure."""
    same_cpu: bool = False
    """Server and wrk pinned to one CPU, so that no request waits for an idle CPU to wake."""


def steal_seconds() -> float:
    """The machine's stolen CPU time so far, from the steal column of /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return int(fields[8]) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_wrk(run: LoadRun, port: int, body_file: Path, servers: Sequence[ServerProcess]) -> None:
    """One wrk run; fills in the figures from wrk's report and the servers' CPU time."""
    every_cpu = os.sched_getaffinity(0)
    if run.same_cpu:
        for server in servers:
            os.sched_setaffinity(server.pid, {min(every_cpu)})
    try:
        _run_wrk(run, port, body_file, servers)
    finally:
        for server in servers:
            os.sched_setaffinity(server.pid, every_cpu)


def _run_wrk(run: LoadRun, port: int, body_file: Path, servers: Sequence[ServerProcess]) -> None:
    command = [
        *(["taskset", "-c", str(min(os.sched_getaffinity(0)))] if run.same_cpu else []),
        "wrk", f"-t{run.threads}", f"-c{run.concurrency}", f"-d{run.seconds:g}s",
        "--timeout", "5s", "-s", str(BENCH_DIR / "post.lua"),
        f"https://{LOOPBACK}:{port}{MUTATE_URL}",
    ]
    cpu_before = sum(server.cpu_seconds() for server in servers)
    tool_before = children_cpu_seconds()
    steal_before = steal_seconds()
    finished = subprocess.run(command, capture_output=True, text=True, check=True,
                              env={**os.environ, "BENCH_BODY": str(body_file)},
                              timeout=run.seconds + 60)
    run.load_tool_cpu_seconds = children_cpu_seconds() - tool_before
    run.steal_seconds = steal_seconds() - steal_before
    run.server_cpu_seconds = sum(server.cpu_seconds() for server in servers) - cpu_before

    report_line = next(line for line in finished.stdout.splitlines()
                       if line.startswith("BENCH "))
    report = json.loads(report_line.removeprefix("BENCH "))
    run.requests = report["requests"]
    run.throughput = report["requests"] / (report["duration_us"] / 1e6)
    run.p50_ms, run.p90_ms = report["p50_us"] / 1000, report["p90_us"] / 1000
    run.p99_ms, run.max_ms = report["p99_us"] / 1000, report["max_us"] / 1000
    run.errors = {kind: count for kind, count in report["errors"].items() if count}
    if run.requests:
        run.cpu_seconds_per_1000 = run.server_cpu_seconds / run.requests * 1000
    if run.server_cpu_seconds:
        run.admissions_per_cpu_second = run.requests / run.server_cpu_seconds


def threads_for(concurrency: int) -> int:
    return min(2, concurrency)


# --- Correctness of the answers -------------------------------------------------------------


def verify_answers(port: int, certificates: Certificates, sent: dict[str, Any],
                   count: int) -> dict[str, Any]:
    """Post the payload ``count`` times on one keep-alive connection and check every answer."""
    body = orjson.dumps(sent)
    wrong: list[str] = []
    with httpx.Client(base_url=f"https://{LOOPBACK}:{port}",
                      verify=certificates.client_context(), timeout=30) as client:
        for _ in range(count):
            response = client.post(MUTATE_URL, content=body,
                                   headers={"content-type": "application/json"})
            problem = answer_problem(response, sent)
            if problem:
                wrong.append(problem)
    return {"requests": count, "correct": count - len(wrong), "problems": wrong[:5]}


def answer_problem(response: httpx.Response, sent: dict[str, Any]) -> str | None:
    if response.status_code != 200:
        return f"status {response.status_code}"
    answer = response.json()
    if answer["response"]["uid"] != sent["request"]["uid"] or not answer["response"]["allowed"]:
        return f"not an allowing answer to this review: {answer['response']}"
    patched = apply_answer(answer, sent["request"]["object"])
    annotations = patched["metadata"]["annotations"]
    selection = orjson.loads(annotations[NETWORKS_ANNOTATION])
    if any("default-route" in element for element in selection):
        return "default-route still present"
    if "gateway.yeet/removed-default-routes" not in annotations:
        return "no record of the removed route"
    return None


# --- The benchmark --------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(certificates: Certificates, workdir: Path, name: str,
                   log_level: str) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    server = ServerProcess(serve_command(certificates, port, log_level), workdir / f"{name}.log")
    try:
        wait_ready(server, port, certificates.client_context())
        yield server, port
    finally:
        server.stop()


def measure_start_up(certificates: Certificates, workdir: Path, starts: int,
                     log_level: str) -> dict[str, Any]:
    times = []
    rss = []
    for attempt in range(starts):
        port = free_port()
        server = ServerProcess(serve_command(certificates, port, log_level),
                               workdir / f"start-{attempt}.log")
        try:
            times.append(wait_ready(server, port, certificates.client_context()))
            rss.append(server.memory_kib("VmRSS"))
        finally:
            server.stop()
    return {"starts": starts, "median_seconds": statistics.median(times),
            "min_seconds": min(times), "max_seconds": max(times),
            "idle_rss_mib": statistics.median(rss) / 1024}


def load_one_payload(name: str, sent: dict[str, Any], arguments: argparse.Namespace,
                     certificates: Certificates, workdir: Path) -> dict[str, Any]:
    body_file = workdir / f"{name.replace(' ', '-')}.json"
    body_file.write_bytes(orjson.dumps(sent))
    size = body_file.stat().st_size
    runs = []
    with running_server(certificates, workdir, f"load-{name.replace(' ', '-')}",
                        arguments.log_level) as (server, port):
        verification = verify_answers(port, certificates, sent, arguments.verify)
        for concurrency in arguments.concurrency:
            run = LoadRun(name, size, concurrency, threads_for(concurrency),
                          arguments.duration, processes=1)
            run_wrk(run, port, body_file, [server])
            run.peak_rss_mib_so_far = server.memory_kib("VmHWM") / 1024
            runs.append(run)
            print_run(run)
        if arguments.same_cpu and 1 in arguments.concurrency:
            run = LoadRun(name, size, 1, 1, arguments.duration, processes=1, same_cpu=True)
            run_wrk(run, port, body_file, [server])
            run.peak_rss_mib_so_far = server.memory_kib("VmHWM") / 1024
            runs.append(run)
            print_run(run)
        peak_rss_mib = server.memory_kib("VmHWM") / 1024
    return {"payload": name, "body_bytes": size, "peak_rss_mib": peak_rss_mib,
            "verification": verification, "runs": [asdict(run) for run in runs]}


def load_with_reuseport(sent: dict[str, Any], arguments: argparse.Namespace,
                        certificates: Certificates, workdir: Path) -> dict[str, Any]:
    """The small review against N processes sharing one port through SO_REUSEPORT."""
    body_file = workdir / "reuseport.json"
    body_file.write_bytes(orjson.dumps(sent))
    port = free_port()
    servers = [
        ServerProcess(
            [sys.executable, str(BENCH_DIR / "reuseport_server.py"), "--port", str(port),
             "--tls-cert-file", str(certificates.cert_file),
             "--tls-private-key-file", str(certificates.key_file),
             "--log-level", arguments.log_level],
            workdir / f"reuseport-{index}.log",
        )
        for index in range(arguments.processes)
    ]
    runs = []
    try:
        deadline = time.monotonic() + 20
        while not all(LISTENING in server.log() for server in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("reuseport servers did not all listen")
            time.sleep(0.01)
        wait_ready(servers[0], port, certificates.client_context())
        verification = verify_answers(port, certificates, sent, arguments.verify)
        for concurrency in arguments.concurrency:
            run = LoadRun("virt-v2v review", body_file.stat().st_size, concurrency,
                          threads_for(concurrency), arguments.duration,
                          processes=len(servers))
            split = [server.cpu_seconds() for server in servers]
            run_wrk(run, port, body_file, servers)
            split = [server.cpu_seconds() - before for server, before in zip(servers, split,
                                                                             strict=True)]
            run.peak_rss_mib_so_far = max(server.memory_kib("VmHWM") for server in servers) / 1024
            runs.append({**asdict(run), "cpu_seconds_per_process": split})
            print_run(run)
        peak_rss = [server.memory_kib("VmHWM") / 1024 for server in servers]
    finally:
        for server in servers:
            server.stop()
    return {"processes": len(servers), "peak_rss_mib_per_process": peak_rss,
            "verification": verification, "runs": runs}


TABLE_HEADER = (
    f"{'payload':<16} {'proc':>4} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
    f"{'max ms':>7} {'CPU s/1000':>10} {'adm/CPU s':>9} {'wrk CPU s':>9} {'steal s':>7} "
    f"{'RSS MiB':>7} errors"
)


def print_run(run: LoadRun) -> None:
    errors = ",".join(f"{kind}={count}" for kind, count in run.errors.items()) or "0"
    processes = f"{run.processes}{'*' if run.same_cpu else ''}"
    print(
        f"{run.payload:<16} {processes:>4} {run.concurrency:>4} {run.throughput:>8.0f} "
        f"{run.p50_ms:>7.3f} {run.p99_ms:>7.3f} {run.max_ms:>7.2f} "
        f"{run.cpu_seconds_per_1000:>10.4f} {run.admissions_per_cpu_second:>9.0f} "
        f"{run.load_tool_cpu_seconds:>9.2f} {run.steal_seconds:>7.2f} "
        f"{run.peak_rss_mib_so_far:>7.1f} {errors}",
        flush=True,
    )


def source_commit() -> str | None:
    """The commit the measured code is at, so that figures can be told apart later."""
    try:
        described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                   capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return described.stdout.strip()


def install_wrk() -> None:
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load per run (default 10)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64],
                        help="connections per run (default 1 8 64)")
    parser.add_argument("--starts", type=int, default=7,
                        help="server starts timed for the start-up figure (default 7)")
    parser.add_argument("--verify", type=int, default=200,
                        help="answers checked per payload (default 200)")
    parser.add_argument("--processes", type=int, default=2,
                        help="SO_REUSEPORT processes for the multi-process run; 0 skips it")
    parser.add_argument("--no-same-cpu", dest="same_cpu", action="store_false",
                        help="skip the extra concurrency-1 run with server and wrk on one CPU")
    parser.add_argument("--payload", choices=list(PAYLOADS), action="append",
                        help="only this payload (repeatable; default: all)")
    parser.add_argument("--log-level", default="info",
                        help="server log level; info logs one line per admission (default)")
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--install", action="store_true",
                        help="install wrk with apt-get first (needs root)")
    return parser.parse_args()


def main() -> int:
    arguments = parse_arguments()
    if arguments.install:
        install_wrk()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run `apt-get install -y wrk` (Debian/Ubuntu), or run this "
              "script with --install as root.", file=sys.stderr)
        return 2

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "commit": source_commit(),
        "settings": {"duration_seconds": arguments.duration,
                     "concurrency": arguments.concurrency, "log_level": arguments.log_level},
    }
    with tempfile.TemporaryDirectory(prefix="gateway-yeeter-bench-") as directory:
        workdir = Path(directory)
        files = write_self_signed(workdir / "certs")
        certificates = Certificates(files.ca_file, files.cert_file, files.key_file)

        results["start_up"] = measure_start_up(certificates, workdir, arguments.starts,
                                               arguments.log_level)
        print(f"start-up to first /readyz 200: median "
              f"{results['start_up']['median_seconds'] * 1000:.0f} ms over "
              f"{arguments.starts} starts; idle RSS {results['start_up']['idle_rss_mib']:.1f} "
              "MiB\n")

        print(TABLE_HEADER)
        results["payloads"] = [
            load_one_payload(name, PAYLOADS[name](), arguments, certificates, workdir)
            for name in (arguments.payload or list(PAYLOADS))
        ]
        if arguments.processes > 0:
            results["reuseport"] = load_with_reuseport(forklift_review(), arguments,
                                                       certificates, workdir)

    print("(proc 1*: server and wrk pinned to one CPU)\n")
    for payload in results["payloads"]:
        checked = payload["verification"]
        print(f"{payload['payload']}: {payload['body_bytes']} bytes, peak RSS "
              f"{payload['peak_rss_mib']:.1f} MiB, {checked['correct']}/{checked['requests']} "
              "answers verified correct")
    if "reuseport" in results:
        shared = results["reuseport"]
        print(f"SO_REUSEPORT x{shared['processes']}: peak RSS per process "
              + ", ".join(f"{rss:.1f}" for rss in shared["peak_rss_mib_per_process"])
              + f" MiB, {shared['verification']['correct']}/"
              f"{shared['verification']['requests']} answers verified correct")

    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults written to {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
