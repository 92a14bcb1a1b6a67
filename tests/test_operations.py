"""The operator's files: the Prometheus alert rules read only metrics opcore exports, and
promtool accepts them (CI installs Debian's prometheus package for promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from opcore_hooks.app import create_app
from opcore_hooks.testing import ADMIN_TOKEN
from plugins.richpanel import plugin

RULES = Path(__file__).resolve().parents[1] / "docs" / "prometheus" / "alerts.yml"


def exported(make_host) -> set[str]:
    host = make_host({"richpanel": plugin})
    with TestClient(create_app(host)) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_alert_reads_metrics_opcore_exports(make_host):
    families = exported(make_host)
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"OpcoreDeadLetters", "OpcoreInvalidCredentials",
                                          "OpcoreClaimToTicketSlow", "OpcoreQueueBacklog"}
    for rule in rules:
        for name in re.findall(r"\bopcore_[a-z_]+", rule["expr"]):
            histogram = re.sub(r"_(bucket|count|sum)$", "", name)
            assert {name, histogram, f"{name}_total"} & families, \
                f"{rule['alert']} reads {name}, which /metrics does not export"
        assert rule["annotations"]["description"], rule["alert"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
