"""The generated report, opened in headless Chromium: the verdict and parity are on the page."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report.allure import ALLURE_ENV
from harness.timing import units

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # its node_modules has the Allure CLI

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (Debian: apt-get install -y chromium); CI installs it",
    ),
]
SHOT = PROJECT_ROOT / "reports" / "signoff-report.png"


def chromium(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=60000",
             "--window-size=1400,1400"]
    return subprocess.run([CHROMIUM, *flags, *args, url], capture_output=True, text=True,
                          timeout=units(180), check=False)


def test_report_shows_verdict_and_parity_in_a_real_browser(tmp_path):
    if not (PROJECT_ROOT / "node_modules" / "allure").is_dir():
        pytest.skip("the Allure CLI is not installed; run `npm ci` in the project root")
    done = subprocess.run(
        [sys.executable, "-m", "harness.cli", "signoff", "-k",
         "test_recall_reaches_online_peer_and_history", "--scenario", "chat", "--load-time",
         "2s", "--users", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=units(240), check=False,
        env={**os.environ, "COLUMNS": "200", ALLURE_ENV: str(PROJECT_ROOT)})
    doc = json.loads((tmp_path / "reports" / "verdict.json").read_text())
    assert doc["report"], done.stdout + done.stderr
    url = Path(doc["report"]).as_uri()
    dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = dom.stdout
    assert "Sign-off" in page
    assert doc["headline"] in page  # "GO: no product regression, ..." or "NO-GO: <reason>"
    recall = doc["parity"]["recall"]
    assert f"old: {recall['old']['skipped_not_supported']} not supported" in page
    assert f"new: {recall['new']['passed']} passed" in page
    # The verdict's own page: the parity table and the load results, as the release owner reads
    # them (Allure 3 routes a result by its id after the '#').
    ids = json.loads((Path(doc["report"]).parent / "test-results.json").read_text())
    ids = next(iter(ids.values())) if len(ids) == 1 else ids
    [verdict_id] = [i for i, r in ids.items() if r["name"].startswith("Sign-off verdict")]
    shown = chromium(f"{url}#{verdict_id}", tmp_path / "profile-verdict", "--dump-dom").stdout
    page = html.unescape(shown)  # the description is rendered in an iframe's srcdoc
    assert f"Verdict: {doc['verdict']}" in page
    assert f"{recall['new']['passed']} passed, 0 failed, 0 not supported" in page
    assert "<th>chat</th>" in page.split('class="load"')[1]
    SHOT.parent.mkdir(parents=True, exist_ok=True)
    SHOT.unlink(missing_ok=True)
    shot = chromium(url, tmp_path / "profile-shot", f"--screenshot={SHOT}")
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert SHOT.stat().st_size > 20_000
