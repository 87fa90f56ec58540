"""Where the server's CPU goes per request: py-spy samples of ``serve`` under wrk load.

Starts a server as ``run.py`` does, loads it with wrk, records native and Python stacks with
``py-spy record --native`` and sorts the samples the server was busy in into the steps of a
request: TLS, HTTP parsing, the review's JSON, the rule, logging, metrics, the kernel's socket
calls. Samples waiting in epoll are idle time and left out. The shares go to
``bench/profile-<payload>-c<concurrency>.json``; the collapsed stacks, for a flame graph tool,
to the path the script prints.

Needs py-spy (``.venv/bin/pip install py-spy``) and root or ptrace permission.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))

from bench.run import (  # noqa: E402
    LOOPBACK,
    MUTATE_URL,
    Certificates,
    forklift_review,
    large_review,
    running_server,
    threads_for,
)

from gateway_yeeter.tls import write_self_signed  # noqa: E402

Frame = tuple[str, str]
"""A frame as py-spy names it: the function and the file (or native library)."""

IDLE = "idle (epoll wait)"


def _in_file(*fragments: str) -> Callable[[Frame], bool]:
    return lambda frame: any(fragment in frame[1] for fragment in fragments)


def _named(*names: str) -> Callable[[Frame], bool]:
    return lambda frame: frame[0] in names


def _named_prefix(*prefixes: str) -> Callable[[Frame], bool]:
    return lambda frame: frame[0].startswith(prefixes)


# Walking from the innermost frame out, the first frame that one of these matches names the
# step a sample belongs to; so a malloc inside OpenSSL counts as TLS, and a write() called by
# the logging handler counts as logging.
CATEGORIES: list[tuple[str, Callable[[Frame], bool]]] = [
    (IDLE, _named("epoll_pwait", "epoll_wait")),
    ("kernel: TCP send (socket write)", _named("UVStream__try_write", "uv__write", "uv_try_write")),
    ("kernel: TCP receive (socket read)", _named("uv__read")),
    ("logging", lambda frame: "logging/" in frame[1] or frame[0] == "log_decision"),
    ("metrics (prometheus_client)", _in_file("prometheus_client/")),
    ("JSON decode of the review", _named("decode_review")),
    ("JSON encode of the answer", _named("encode_review", "build_response")),
    ("the rule (admission, networks, targeting)",
     _in_file("gateway_yeeter/admission.py", "gateway_yeeter/networks.py",
              "gateway_yeeter/targeting.py")),
    ("request plumbing (server.py: body read, timeout query)",
     _in_file("gateway_yeeter/server.py")),
    ("TLS (OpenSSL and the SSL protocol)",
     lambda frame: "libssl" in frame[1] or "libcrypto" in frame[1] or "ssl.py" in frame[1]
     or frame[0].startswith(("SSLProtocol", "_ssl__", "SSL_"))),
    ("HTTP parsing and framing (httptools, uvicorn)",
     lambda frame: "llhttp" in frame[0] or "httptools" in frame[1] or "uvicorn/" in frame[1]
     or frame[0].startswith(("HttpParser", "parser_cb"))),
    ("event loop (uvloop, asyncio tasks)",
     lambda frame: "asyncio/" in frame[1]
     or frame[0].startswith(("Loop_", "Handle_", "task_", "uv_", "uv__", "UV", "TimerHandle",
                             "loop_"))),
]


def parse_frame(text: str) -> Frame:
    name, _, location = text.partition(" (")
    return name, location.rstrip(")")


def categorise(frames: list[Frame]) -> str:
    for frame in reversed(frames):
        for category, matches in CATEGORIES:
            if matches(frame):
                return category
    return "other"


def breakdown(collapsed: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        counts[categorise([parse_frame(frame) for frame in stack.split(";")])] += int(count)
    return dict(counts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--large", action="store_true", help="profile the 1 MB pod instead")
    parser.add_argument("--log-level", default="info")
    arguments = parser.parse_args()

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists() or shutil.which("wrk") is None:
        print("needs py-spy (.venv/bin/pip install py-spy) and wrk (apt-get install -y wrk)",
              file=sys.stderr)
        return 2

    name = f"{'large' if arguments.large else 'small'}-c{arguments.concurrency}"
    collapsed = Path(tempfile.gettempdir()) / f"gateway-yeeter-profile-{name}.txt"
    with tempfile.TemporaryDirectory(prefix="gateway-yeeter-profile-") as directory:
        workdir = Path(directory)
        files = write_self_signed(workdir / "certs")
        certificates = Certificates(files.ca_file, files.cert_file, files.key_file)
        body_file = workdir / "body.json"
        body_file.write_bytes(orjson.dumps(large_review() if arguments.large
                                           else forklift_review()))

        with running_server(certificates, workdir, "profiled",
                            arguments.log_level) as (server, port):
            wrk = subprocess.Popen(
                ["wrk", f"-t{threads_for(arguments.concurrency)}",
                 f"-c{arguments.concurrency}", f"-d{arguments.duration + 2:g}s",
                 "-s", str(BENCH_DIR / "post.lua"), f"https://{LOOPBACK}:{port}{MUTATE_URL}"],
                stdout=subprocess.PIPE, text=True,
                env={**os.environ, "BENCH_BODY": str(body_file)},
            )
            # py-spy starts once wrk's connections are up, and stops before wrk does.
            subprocess.run(
                [py_spy, "record", "--pid", str(server.pid), "--native",
                 "--rate", str(arguments.rate), "--duration", f"{arguments.duration:g}",
                 "--format", "raw", "--output", str(collapsed)],
                check=True, capture_output=True, timeout=arguments.duration + 60,
            )
            output, _ = wrk.communicate(timeout=arguments.duration + 60)

    counts = breakdown(collapsed)
    busy = sum(count for category, count in counts.items() if category != IDLE)
    print(f"{name}: {busy} busy samples of {sum(counts.values())} "
          f"({counts.get(IDLE, 0)} idle in epoll); stacks in {collapsed}")
    shares = {category: count / busy for category, count in counts.items() if category != IDLE}
    for category, share in sorted(shares.items(), key=lambda item: -item[1]):
        print(f"  {share * 100:5.1f}%  {category}")
    report = next((line for line in output.splitlines() if line.startswith("BENCH ")), "")
    (BENCH_DIR / f"profile-{name}.json").write_text(json.dumps(
        {"busy_samples": busy, "idle_samples": counts.get(IDLE, 0), "shares": shares,
         "wrk": json.loads(report.removeprefix("BENCH ")) if report else None}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
