"""``gateway-yeeter mutate``: the rule offline, on a review or a bare Pod manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from click.testing import CliRunner

from gateway_yeeter.cli import main
from tests.pods import NETWORKS, review, virt_v2v_pod
from tests.webhook import apply_answer

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_a_review_file_gets_the_answer_the_server_would_give(tmp_path: Path) -> None:
    path = tmp_path / "review.json"
    sent = review(virt_v2v_pod(), uid="cli-1")
    path.write_bytes(orjson.dumps(sent))

    result = CliRunner().invoke(main, ["mutate", str(path)])

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["response"]["uid"] == "cli-1"
    patched = apply_answer(answer, virt_v2v_pod())
    assert "default-route" not in patched["metadata"]["annotations"][NETWORKS]
    assert "mutated: removed default-route" in result.stderr


def test_a_yaml_pod_from_stdin_comes_back_patched_as_yaml() -> None:
    manifest = yaml.safe_dump(virt_v2v_pod())

    result = CliRunner().invoke(main, ["mutate", "--output", "pod", "-"], input=manifest)

    assert result.exit_code == 0, result.output
    pod = yaml.safe_load(result.stdout)
    assert pod["metadata"]["annotations"][NETWORKS] == (
        '[{"name":"transfer-l2","namespace":"openshift-mtv"}]'
    )
    assert pod["spec"] == virt_v2v_pod()["spec"]


def test_the_policy_flags_apply_offline_too() -> None:
    manifest = json.dumps(virt_v2v_pod())

    result = CliRunner().invoke(
        main, ["mutate", "-o", "pod", "--networks", "openshift-mtv/other", "-"], input=manifest
    )

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == virt_v2v_pod()
    assert "unchanged" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("key: [unclosed", "neither JSON nor YAML"), ("- a list", "neither an AdmissionReview"),
     ('{"kind": "Deployment"}', "not an AdmissionReview")],
)
def test_input_that_is_no_review_or_pod_is_refused_clearly(content: str, message: str) -> None:
    result = CliRunner().invoke(main, ["mutate", "-"], input=content)

    assert result.exit_code == 1
    assert message in result.output


def test_the_shipped_example_review_is_mutated() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway_yeeter", "mutate", str(EXAMPLES / "virt-v2v-review.json")],
        capture_output=True, text=True, check=True, timeout=30,
    )

    assert "patch" in json.loads(result.stdout)["response"]
