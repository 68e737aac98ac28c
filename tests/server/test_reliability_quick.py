"""``benchmarks/reliability.py --quick`` runs end to end and every correctness check holds (timings are only figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_reliability_quick_checks_hold(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "reliability.py"), "--quick", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900)
    [result] = tmp_path.glob("reliability-quick-*.json")
    checks = json.loads(result.read_text())["checks"]
    assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
    assert checks["load"]["errors"] == 0 and checks["load"]["differ_from_solo"] == 0
    assert checks["load"]["gauges_after"] == {"waiting": 0.0, "running": 0.0}
    assert checks["disconnects"]["cancelled"] == 6 and checks["disconnects"]["ran_to_the_end"] == 0
    assert checks["bad_requests"]["requests"] >= 30 and not checks["bad_requests"]["failures"]
    assert checks["fuzz"]["cases"] > 0 and checks["fuzz"]["failures_total"] == 0
    assert checks["sigterm"]["exit_code"] == 0 and checks["sigterm"]["incomplete"] == 0 and checks["sigterm"]["tracebacks"] == 0
    assert checks["extract_kill"]["loads_after"] and all(t["file_whole"] for t in checks["extract_kill"]["trials"] if t["was_running"])
    assert list(tmp_path.glob("reliability-quick-*.md"))
