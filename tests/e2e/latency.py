"""Figures of pod-create latency through the API server, and where the test run reports them.

The test measures; the terminal summary prints (whether or not pytest captures output), and
the figures are also written to bench/e2e-latency.json for comparison between runs.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import pytest

from .webhook_setup import REPO_ROOT

RESULT_FILE: Final = REPO_ROOT / "bench" / "e2e-latency.json"
REPORT: Final = pytest.StashKey[list[str]]()
"""Lines for the terminal summary, left in the session's stash by the latency test."""


@dataclass(frozen=True)
class Latency:
    """Percentiles of one series of creates, in milliseconds."""

    creates: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        # "inclusive" treats the series as the whole population, not a sample of a larger one.
        cuts = statistics.quantiles(seconds, n=100, method="inclusive")
        return cls(
            creates=len(seconds),
            p50_ms=round(cuts[49] * 1000, 2),
            p99_ms=round(cuts[98] * 1000, 2),
            mean_ms=round(statistics.fmean(seconds) * 1000, 2),
            max_ms=round(max(seconds) * 1000, 2),
        )

    def line(self, label: str) -> str:
        return (
            f"{label:<22} p50 {self.p50_ms:7.2f} ms   p99 {self.p99_ms:7.2f} ms   "
            f"mean {self.mean_ms:7.2f} ms   max {self.max_ms:7.2f} ms   ({self.creates} creates)"
        )


def report(
    config: pytest.Config, *, without: Latency, with_webhook: Latency, answering_ms: float
) -> Path:
    """Keep the figures for the terminal summary and write them to RESULT_FILE.

    `answering_ms` is the webhook's own mean time from request body to answer, which tells
    how much of what it adds is the webhook and how much the call around it.
    """
    config.stash[REPORT] = [
        without.line("without the webhook"),
        with_webhook.line("with the webhook"),
        f"{'added by the webhook':<22} p50 {with_webhook.p50_ms - without.p50_ms:+7.2f} ms   "
        f"p99 {with_webhook.p99_ms - without.p99_ms:+7.2f} ms   "
        f"(answering inside the webhook: mean {answering_ms:.3f} ms)",
        f"written to {RESULT_FILE.relative_to(REPO_ROOT)}",
    ]
    RESULT_FILE.parent.mkdir(exist_ok=True)
    RESULT_FILE.write_text(
        json.dumps(
            {
                "what": "virt-v2v pod creates through kube-apiserver, one at a time",
                "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "without_webhook": asdict(without),
                "with_webhook": asdict(with_webhook),
                "webhook_answering_mean_ms": round(answering_ms, 3),
            },
            indent=2,
        )
        + "\n"
    )
    return RESULT_FILE
