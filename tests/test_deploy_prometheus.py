"""deploy/prometheus/alerts.yml: ``promtool check rules`` and ``promtool test rules`` with the
rule unit tests in alerts_test.yml (input series -> expected alerts, labels and rendered
annotations); every alert carries a runbook."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

RULES = Path(__file__).parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "make test installs it (scripts/install-system-deps.sh)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=RULES)  # fmt: skip


def alerting_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    print(checked.stdout, file=sys.stderr)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in checked.stdout


def test_promtool_test_rules_and_every_alert_is_tested(tmp_path: Path) -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    print(tested.stdout, file=sys.stderr)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
    unit_tests = yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in unit_tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}  # fmt: skip
    assert fired == {rule["alert"] for rule in alerting_rules()}
    # The unit tests can fail: a rule whose threshold moved breaks them.
    (tmp_path / "alerts.yml").write_text(
        (RULES / "alerts.yml").read_text().replace("> 0.2\n", "> 0.6\n")
    )
    (tmp_path / "alerts_test.yml").write_text((RULES / "alerts_test.yml").read_text())
    moved = subprocess.run([str(PROMTOOL), "test", "rules", "alerts_test.yml"],
                           capture_output=True, text=True, timeout=120, check=False,
                           cwd=tmp_path)  # fmt: skip
    assert moved.returncode != 0
    assert "XksProxyLatencyP99High" in moved.stdout + moved.stderr


def test_every_alert_has_a_runbook_summary_and_severity() -> None:
    for rule in alerting_rules():
        annotations, labels = rule["annotations"], rule["labels"]
        assert isinstance(annotations, dict) and isinstance(labels, dict)
        assert annotations["runbook"] and annotations["summary"], rule["alert"]
        assert labels["severity"] in {"warning", "critical"}, rule["alert"]
