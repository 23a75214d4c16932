"""The sign-off's latency section, read from real im-latency files (real HdrHistograms)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config import load_config
from harness.errors import ConfigError
from harness.latency import LatencyLog
from harness.report.latency import options, read_latency
from harness.report.parity import ParityTable
from harness.report.readers import READERS
from harness.report.results import Results
from harness.report.sections import RunFiles, Section, read_sections
from harness.report.verdict import decide


def write(folder: Path, worker: str, samples: dict[str, dict[str, list[float]]]) -> None:
    """`{endpoint: {operation: [ms, ...]}}` recorded into a real log, written as a worker would."""
    log = LatencyLog()
    for name, ops in samples.items():
        for op, values in ops.items():
            for ms in values:
                log.endpoint(name).record(op, ms / 1000)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"im-latency-{worker}.json").write_text(log.to_json())


def section(folder: Path, **opts: float) -> Section:
    found = read_latency(RunFiles(folder, folder.parent, ("old", "new"), options=opts))
    assert found is not None
    return found


def spread(base: float, n: int = 40) -> list[float]:
    return [base + i * base / n for i in range(n)]  # base .. 2*base, a p95 near 1.95*base


def test_new_p95_over_factor_and_floor_is_a_no_go_with_both_numbers(tmp_path: Path) -> None:
    write(tmp_path, "gw0", {"old": {"delivery": [3.1] * 40, "connect": spread(5)},
                            "new": {"delivery": [3.0] * 38 + [212.4] * 2, "connect": spread(5)}})
    write(tmp_path, "gw1", {"new": {"delivery": [212.4] * 40}})  # merged with gw0
    found = section(tmp_path)
    assert [(f.what, f.blocking) for f in found.findings] == [(
        "send->delivery p95 on new 212.5 ms vs old 3.1 ms: over 2x and +20 ms", True)]
    assert found.data["operations"]["delivery"]["new"]["count"] == 80
    assert found.data["files"] == ["im-latency-gw0.json", "im-latency-gw1.json"]
    assert "send->delivery" in found.text
    assert "212.5" in found.text
    assert "<table" in found.html
    assert "send-&gt;delivery" in found.html
    assert found.reasons() == [
        "Latency in the suites: send->delivery p95 on new 212.5 ms vs old 3.1 ms: over 2x and "
        "+20 ms"]


@pytest.mark.parametrize(("old_ms", "new_ms", "flagged"), [
    (3.0, 3.0, False),  # the same
    (3.0, 15.0, False),  # 5x, but only +12 ms: under the floor
    (100.0, 150.0, False),  # +50 ms, but only 1.5x: under the factor
    (100.0, 250.0, True),  # both
    (2.0, 2.0 + 20.5, True),  # 11x and just over the floor
])
def test_a_finding_needs_both_the_factor_and_the_floor(
    tmp_path: Path, old_ms: float, new_ms: float, flagged: bool
) -> None:
    write(tmp_path, "main", {"old": {"send_ack": [old_ms] * 30},
                             "new": {"send_ack": [new_ms] * 30}})
    found = section(tmp_path)
    assert [f.blocking for f in found.findings] == ([True] if flagged else [])
    assert found.ok is not flagged


def test_knobs_come_from_the_plan_options(tmp_path: Path) -> None:
    write(tmp_path, "main", {"old": {"history": [10.0] * 30}, "new": {"history": [40.0] * 30}})
    assert not section(tmp_path).ok  # 4x and +30 ms
    assert section(tmp_path, latency_factor=5.0).ok
    assert section(tmp_path, latency_floor_ms=50.0).ok
    tight = section(tmp_path, latency_factor=1.5, latency_floor_ms=5.0)
    assert tight.findings[0].what.endswith("over 1.5x and +5 ms")


def test_too_few_samples_is_a_note_never_a_verdict(tmp_path: Path) -> None:
    write(tmp_path, "main", {"old": {"connect": [2.0] * 25, "delivery": [2.0] * 30},
                             "new": {"connect": [900.0] * 19, "delivery": [2.0] * 30}})
    found = section(tmp_path)
    assert found.ok
    assert [(f.what, f.blocking) for f in found.findings] == [(
        "connect: too few samples to compare (old 25, new 19; at least 20 on each side)", False)]
    assert found.notes() == [f"Latency in the suites: {found.findings[0].what}"]


def test_an_operation_nobody_timed_is_shown_empty_without_a_note(tmp_path: Path) -> None:
    write(tmp_path, "main", {"old": {"delivery": [2.0] * 30}, "new": {"delivery": [2.0] * 30}})
    found = section(tmp_path)
    assert found.findings == []
    assert found.data["operations"]["history"] == {"label": "history page",
                                                   "old": {"count": 0}, "new": {"count": 0}}
    row = next(line for line in found.text.splitlines() if line.startswith("history page"))
    assert row.split()[2:] == ["0", "-", "-", "-", "0", "-", "-", "-"]


def test_no_latency_files_no_section(tmp_path: Path) -> None:
    assert read_latency(RunFiles(tmp_path, tmp_path, ("old", "new"))) is None


def test_a_damaged_file_is_a_blocking_finding_naming_it(tmp_path: Path) -> None:
    write(tmp_path, "gw0", {"old": {"delivery": [2.0] * 30}, "new": {"delivery": [2.0] * 30}})
    (tmp_path / "im-latency-gw1.json").write_text('{"format": 1, "endpoints": {"new": {"x": 1}}}')
    found = section(tmp_path)
    [finding] = found.findings
    assert finding.blocking
    assert finding.what.startswith("could not read im-latency-gw1.json, so latency is judged "
                                   "without it: im-latency-gw1.json: endpoint 'new' has 'x'")
    assert found.data["operations"]["delivery"]["new"]["count"] == 30  # gw0 still counts


def test_the_sign_off_asks_the_latency_reader_and_decides_no_go(tmp_path: Path) -> None:
    assert read_latency in READERS
    write(tmp_path, "main", {"old": {"delivery": [3.0] * 30}, "new": {"delivery": [230.0] * 30}})
    sections = read_sections(RunFiles(tmp_path, tmp_path, ("old", "new")), READERS)
    [latency] = [s for s in sections if s.key == "latency"]
    verdict = decide(Results(), ParityTable.build([], ("old", "new")), promised=None,
                     load_expected=False, full_run=False, sections=sections)
    assert not verdict.go
    assert latency.reasons()[0] in verdict.reasons


def test_config_knobs_are_validated_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "im-harness.toml"
    config.write_text("[harness]\nlatency_factor = 3\nlatency_floor_ms = 50\n")
    assert options(load_config(str(config)).harness) == {"latency_factor": 3.0,
                                                         "latency_floor_ms": 50.0}
    assert options(load_config(None).harness) == {"latency_factor": 2.0, "latency_floor_ms": 20.0}
    for line, words in (("latency_factor = 0.5", "harness.latency_factor = 0.5: input should be "
                         "greater than or equal to 1"),
                        ("latency_floor_ms = -3", "harness.latency_floor_ms = -3: input should "
                         "be greater than or equal to 0")):
        config.write_text(f"[harness]\n{line}\n")
        with pytest.raises(ConfigError) as info:
            load_config(str(config))
        assert words in str(info.value)
        assert "\n" not in str(info.value)


def test_sign_off_options_win_over_the_config(tmp_path: Path) -> None:
    config = tmp_path / "im-harness.toml"
    config.write_text("[harness]\nlatency_factor = 3\nlatency_floor_ms = 50\n")
    harness = load_config(str(config)).harness
    assert options(harness, factor="1.5") == {"latency_factor": 1.5, "latency_floor_ms": 50.0}
    assert options(harness, floor_ms="0") == {"latency_factor": 3.0, "latency_floor_ms": 0.0}
    with pytest.raises(ConfigError, match="^--latency-factor '0.9' must be a finite number >= 1"):
        options(harness, factor="0.9")
