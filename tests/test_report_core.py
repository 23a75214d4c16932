"""The report core on real files: results read back, parity, verdict, redaction, Allure config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.load.metrics import LoadMetrics
from harness.load.summary import build_summary
from harness.report.allure import CATEGORIES, Result, executor, write_config, write_result
from harness.report.loadreport import histogram_bars, load_result
from harness.report.parity import ParityTable
from harness.report.redact import MASK, Redactor
from harness.report.results import read_allure, read_junit, read_results
from harness.report.verdict import LoadOutcome, decide


def suite_result(folder: Path, name: str, endpoint: str, status: str, caps: list[str],
                 kind: str = "", message: str = "") -> None:
    data = {
        "uuid": name + endpoint, "name": f"{name}[{endpoint}]", "fullName": f"suites.x#{name}",
        "status": status, "statusDetails": {"message": message},
        "labels": [{"name": "epic", "value": "Chat"}, {"name": "im_endpoint", "value": endpoint},
                   {"name": "im_case", "value": f"suites/x.py::{name}"},
                   *({"name": "im_capability", "value": c} for c in caps),
                   *([{"name": "im_failure", "value": kind}] if kind else [])],
    }
    (folder / f"{name}-{endpoint}-result.json").write_text(json.dumps(data))


def world(tmp_path: Path) -> Path:
    suite_result(tmp_path, "send", "old", "passed", ["chat"])
    suite_result(tmp_path, "send", "new", "passed", ["chat"])
    suite_result(tmp_path, "recall", "old", "skipped", ["chat", "recall"], "unsupported",
                 "endpoint 'old' (reference v1, tier free) does not offer capability 'recall'")
    suite_result(tmp_path, "recall", "new", "passed", ["chat", "recall"])
    return tmp_path


SUMMARY_OK = {"within_budget": True, "budgets": {"verdicts": [
    {"budget": "send_ack.p99_ms", "limit": 1000, "actual": 12.5, "ok": True}]}}
SUMMARY_OVER = {"within_budget": False, "budgets": {"verdicts": [
    {"budget": "send_ack.p99_ms", "limit": 10, "actual": 12.5, "ok": False}]}}


def test_parity_counts_a_not_supported_skip_only_under_the_missing_capability(tmp_path):
    table = ParityTable.build(read_allure(world(tmp_path)), ["old", "new"])
    assert table.cell("chat", "old").to_dict() == {
        "passed": 1, "failed": 0, "skipped_not_supported": 0, "skipped_other": 0}
    assert table.cell("recall", "old").not_supported == 1
    assert (table.cell("chat", "new").passed, table.cell("recall", "new").passed) == (2, 1)
    assert "1 not supported" in table.to_text()
    assert "| recall |" in table.to_markdown()


def test_go_needs_every_promise_passing_and_every_budget(tmp_path):
    results = read_results(world(tmp_path))
    table = ParityTable.build(results.outcomes, ["old", "new"])
    ok = decide(results, table, promised=["chat", "recall", "custom", "mute"],
                loads=[LoadOutcome("chat", SUMMARY_OK)])
    assert ok.go, ok.reasons
    assert ok.notes == ["promised by new but exercised by no test in this run: 'custom', 'mute'"]
    over = decide(results, table, promised=["chat"], loads=[LoadOutcome("chat", SUMMARY_OVER)])
    assert not over.go
    assert over.reasons == ["budget exceeded in load scenario 'chat': send_ack.p99_ms 12.5 "
                            "(limit 10)"]
    crashed = decide(results, table, promised=["chat"],
                     loads=[LoadOutcome("chat", None, "locust exited 1")])
    assert "produced no result: locust exited 1" in crashed.reasons[0]
    unknown = decide(results, table, promised=None, loads=[LoadOutcome("chat", SUMMARY_OK)])
    assert not unknown.go
    assert "never reached" in unknown.reasons[0]


def test_regression_on_new_is_no_go_but_a_failure_on_both_is_a_note(tmp_path):
    folder = world(tmp_path)
    suite_result(folder, "burst", "new", "failed", ["chat"], "product", "AssertionError: order")
    suite_result(folder, "unicode", "old", "failed", ["chat"], "product", "garbled")
    suite_result(folder, "unicode", "new", "failed", ["chat"], "product", "garbled")
    results = read_results(folder)
    table = ParityTable.build(results.outcomes, ["old", "new"])
    verdict = decide(results, table, promised=["chat"], loads=[LoadOutcome("chat", SUMMARY_OK)])
    regressions = [r for r in verdict.reasons if r.startswith("product regression")]
    assert regressions == ["product regression on new: burst[new]: AssertionError: order"]
    assert any("unicode[new]" in n and "not a regression" in n for n in verdict.notes)
    assert any("'chat' promised by new has 2 failing" in r for r in verdict.reasons)


def test_harness_errors_and_an_empty_run_are_no_go(tmp_path):
    folder = world(tmp_path)
    suite_result(folder, "boom", "new", "broken", ["chat"], "harness", "OSError: refused")
    results = read_results(folder)
    verdict = decide(results, ParityTable.build(results.outcomes, ["old", "new"]),
                     promised=["chat"], loads=[LoadOutcome("chat", SUMMARY_OK)])
    assert any("harness or infrastructure" in r and "OSError" in r for r in verdict.reasons)
    empty = read_results(tmp_path / "missing")
    assert not decide(empty, ParityTable(["old", "new"]), promised=[], load_expected=False).go


def test_junit_fallback_reads_endpoint_and_skip_reason(tmp_path):
    xml = tmp_path / "j.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="suites.test_recall" name="test_r[old]">'
        "<skipped message=\"endpoint 'old' (reference v1, tier free) does not offer capability "
        "'recall'\"/></testcase>"
        '<testcase classname="suites.test_recall" name="test_r[new]">'
        '<failure message="AssertionError: lost">x</failure></testcase>'
        "</testsuite></testsuites>")
    results = read_results(tmp_path / "none", xml)
    assert results.source == "junit"
    assert results.junit_total == 2
    old, new = read_junit(xml)
    assert (old.endpoint, old.not_supported, old.case) == ("old", True, new.case)
    assert (new.status, new.kind, new.area) == ("failed", "product", "Recall")


def test_redactor_masks_secrets_in_text_and_files(tmp_path):
    secret = "s3cr3t-value-123"
    redactor = Redactor([secret, "ab"])  # too short to mask safely: ignored
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text(f"key={secret} lab")
    (tmp_path / "b.bin").write_bytes(b"nothing here")
    assert redactor.text(f"x {secret} y") == f"x {MASK} y"
    assert redactor.tree(tmp_path) == [tmp_path / "sub" / "a.txt"]
    assert (tmp_path / "sub" / "a.txt").read_text() == f"key={MASK} lab"


def test_written_results_are_marked_and_redacted(tmp_path):
    redactor = Redactor(["top-secret-token"])
    write_result(tmp_path, Result(name="load chat", full_name="load.chat", status="failed",
                                  message="token top-secret-token leaked"), redactor)
    [path] = tmp_path.glob("*-result.json")
    assert "top-secret-token" not in path.read_text()
    assert read_allure(tmp_path) == []  # generated results are not suite outcomes


def test_allure_config_has_the_four_categories_and_single_file(tmp_path):
    cfg = json.loads(write_config(tmp_path / "allurerc.json", name="n", output="o",
                                  history="h.jsonl").read_text())
    names = [c["name"] for c in cfg["categories"]["rules"]]
    assert names == [c["name"] for c in CATEGORIES] == [
        "Product regression", "Budget exceeded", "Harness or infrastructure error",
        "Capability not supported"]
    assert cfg["plugins"]["awesome"]["options"]["singleFile"] is True
    assert cfg["historyPath"] == "h.jsonl"


def test_executor_from_ci_variables():
    gh = executor({"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com",
                   "GITHUB_REPOSITORY": "a/b", "GITHUB_RUN_ID": "7", "GITHUB_RUN_NUMBER": "3"})
    assert gh is not None
    assert gh["buildUrl"].endswith("a/b/actions/runs/7")
    assert executor({}) is None


def test_checked_in_allurerc_matches_the_generated_categories():
    """`npx allure generate reports/allure-results` from the root uses the same categories."""
    root = Path(__file__).resolve().parent.parent
    cfg = json.loads((root / "allurerc.json").read_text())
    assert cfg["categories"]["rules"] == CATEGORIES
    assert cfg["historyPath"] == "reports/allure-history.jsonl"


def load_summary() -> dict:
    """A real load summary: 90 sends acked at 2-4 ms and 10 slow ones at 40 ms."""
    metrics = LoadMetrics()
    for i in range(90):
        metrics.record("send_ack", 0.002 + 0.002 * i / 89)
    for _ in range(10):
        metrics.record("send_ack", 0.040)
    metrics.record("connect", 0.001)
    return build_summary(metrics, scenario="chat", endpoint={"name": "new", "describe": "x"})


def test_load_result_draws_the_histogram_the_load_layer_measured():
    summary = load_summary()
    rows = summary["histogram_ms"]["send_ack"]
    bars = histogram_bars(rows)
    assert sum(n for _, _, n in bars) == 100
    widths = {round(w, 6) for _, w, _ in bars}
    assert len(widths) == 1  # equal steps, also across the left-out empty ones
    assert all(left + width == pytest.approx(upper)
               for (left, width, _), (upper, _) in zip(bars, rows, strict=True))
    assert max(bars, key=lambda b: b[0])[2] == 10  # the slow tail is its own bar
    result = load_result(LoadOutcome("chat", summary))
    shots = {a.name: a for a in result.attachments if a.mime == "image/png"}
    assert set(shots) == {"latency histogram"}  # no locust history given: no time plot
    assert shots["latency histogram"].body.startswith(b"\x89PNG")


def test_a_void_run_is_the_harness_s_broken_result_never_a_budget_failure():
    summary = {**load_summary(), "within_budget": False, "void": True,
               "generator": {"void": True, "reasons": ["event-loop lag p99 900 ms > 100 ms"]}}
    result = load_result(LoadOutcome("chat", summary))
    assert result.status == "broken"
    assert ("im_failure", "harness") in result.labels
    assert ("im_failure", "budget") not in result.labels
    assert result.message == "void: event-loop lag p99 900 ms > 100 ms"
    assert result.name.endswith(": VOID")
    over = load_result(LoadOutcome("chat", {**load_summary(), "within_budget": False}))
    assert (over.status, ("im_failure", "budget") in over.labels) == ("failed", True)


def test_a_summary_without_histogram_gets_the_percentile_chart():
    summary = {k: v for k, v in load_summary().items() if k != "histogram_ms"}
    result = load_result(LoadOutcome("chat", summary))
    assert [a.name for a in result.attachments if a.mime == "image/png"] == [
        "latency distribution"]


def test_verdict_page_shows_parity_and_load_and_comes_first(tmp_path):
    from harness.report.signoff import verdict_result

    table = ParityTable.build(read_allure(world(tmp_path)), ("old", "new"))
    over = load_summary() | SUMMARY_OVER
    loads = [LoadOutcome("chat", load_summary() | {"within_budget": True}),
             LoadOutcome("group", over)]
    verdict = decide(read_results(tmp_path, None, ("old", "new")), table, promised=None,
                     loads=loads, old="old", new="new", full_run=False)
    result = verdict_result(verdict, table, {}, started_ms=1_000, loads=loads)
    page = result.description_html
    assert "<h2>Verdict: NO-GO</h2>" in page
    assert "<th>recall</th><td>0 passed, 0 failed, 1 not supported</td>" in page
    load = page.split('<table class="load"')[1]
    chat, group = load.split("<th>chat</th>")[1], load.split("<th>group</th>")[1]
    assert "within budget" in chat.split("</tr>")[0]
    assert "OVER BUDGET: send_ack.p99_ms 12.5 (limit 10)" in group.split("</tr>")[0]
    assert result.start_ms == 1_000 < result.stop_ms


def test_load_page_shows_the_plots_inline():
    result = load_result(LoadOutcome("chat", load_summary(), started_ms=5, stopped_ms=9))
    assert result.description_html.count('src="data:image/png;base64,') == 1
    assert (result.start_ms, result.stop_ms) == (5, 9)


HISTORY = """Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,95%
1700000000,0,,Aggregated,0.0,0.0,N/A,N/A
1700000001,4,IM,send_ack,0.0,0.0,0,0
1700000002,4,IM,send_ack,8.0,0.0,4,6
1700000003,4,IM,send_ack,8.0,0.0,5,7
"""


def test_latency_over_time_starts_at_the_first_measured_row(tmp_path):
    from harness.report.loadreport import _from_first_sample, read_history

    csv_file = tmp_path / "chat_stats_history.csv"
    csv_file.write_text(HISTORY)
    points = read_history(csv_file)["send_ack"]
    assert _from_first_sample(points) == [(1.0, 4.0, 6.0), (2.0, 5.0, 7.0)]
    result = load_result(LoadOutcome("chat", load_summary()), history_csv=csv_file)
    assert "latency over time" in {a.name for a in result.attachments}
    csv_file.write_text(HISTORY.splitlines()[0] + "\n" + HISTORY.splitlines()[2] + "\n")
    result = load_result(LoadOutcome("chat", load_summary()), history_csv=csv_file)
    assert "latency over time" not in {a.name for a in result.attachments}


def test_allure_is_found_by_variable_then_node_modules_up_from_the_cwd(tmp_path, monkeypatch):
    from harness.report import allure as allure_module

    monkeypatch.setattr(allure_module.shutil, "which",
                        lambda name: "/usr/bin/node" if name == "node" else None)
    monkeypatch.delenv(allure_module.ALLURE_ENV, raising=False)
    team = tmp_path / "team"
    (team / "node_modules" / "allure").mkdir(parents=True)
    (team / "node_modules" / "allure" / "cli.js").write_text("// allure")
    (team / "sub").mkdir()
    assert allure_module.allure_command(team / "sub") == [
        "/usr/bin/node", str((team / "node_modules" / "allure" / "cli.js").resolve())]
    assert allure_module.allure_command(tmp_path) is None  # not in the harness's own install
    other = tmp_path / "other"
    (other / "node_modules" / ".bin").mkdir(parents=True)
    (other / "node_modules" / ".bin" / "allure").write_text("#!/usr/bin/env node")
    monkeypatch.setenv(allure_module.ALLURE_ENV, str(other))
    assert allure_module.allure_command(team) == [
        "/usr/bin/node", str((other / "node_modules" / ".bin" / "allure").resolve())]
    monkeypatch.setenv(allure_module.ALLURE_ENV, str(tmp_path / "missing"))
    assert allure_module.allure_command(team) is None


def test_the_one_masking_helper_masks_urls_secret_keys_and_pasted_secrets() -> None:
    from harness.report.redact import Redactor, mask_urls, shown

    assert mask_urls("at wss://bob:pw-9f@h.example:443/x") == f"at wss://{MASK}@h.example:443/x"
    assert shown("pw-9f", "app_key") == MASK
    assert shown("sk_live 9f", "app_key_env") == MASK  # not a variable name: maybe a secret
    assert shown("NEW_APP_KEY", "app_key_env") == "'NEW_APP_KEY'"
    assert shown({"app_key": "pw-9f"}) == "a table of 1 key(s)"
    redactor = Redactor.from_environ({"NEW_APP_KEY": "pw-9f-long", "HOME": "/root"})
    assert redactor.line("key pw-9f-long\nin /root") == f"key {MASK} in /root"


def test_a_sections_blocking_finding_is_a_no_go_reason_and_the_others_notes(tmp_path):
    from harness.report.sections import Finding, RunFiles, Section, read_sections

    def slow(files: RunFiles) -> Section:
        assert files.endpoints == ("old", "new")
        return Section("latency", "Latency in the suites",
                       [Finding("send->delivery p95 on new 212.0 ms vs old 3.1 ms"),
                        Finding("history p95 on new 4.0 ms vs old 3.0 ms", blocking=False)])

    def broken(files: RunFiles) -> Section:
        raise ValueError("im-latency.json is not JSON")

    def silent(files: RunFiles) -> None:
        return None

    files = RunFiles(tmp_path, tmp_path, ("old", "new"))
    sections = read_sections(files, [slow, broken, silent])
    assert [s.key for s in sections] == ["latency", "reader_error"]
    results = read_results(world(tmp_path))
    table = ParityTable.build(results.outcomes, ["old", "new"])
    verdict = decide(results, table, promised=["chat"], loads=[LoadOutcome("chat", SUMMARY_OK)],
                     sections=sections)
    assert not verdict.go
    assert verdict.reasons[0] == ("Latency in the suites: send->delivery p95 on new 212.0 ms vs "
                                  "old 3.1 ms")
    assert "im-latency.json is not JSON" in verdict.reasons[1]
    assert verdict.notes[-1].startswith("Latency in the suites: history p95")
    assert 'style="color:#c00"' in sections[0].to_html()
    clean = decide(results, table, promised=["chat"], loads=[LoadOutcome("chat", SUMMARY_OK)],
                   sections=[Section("latency", "Latency in the suites")])
    assert clean.go
