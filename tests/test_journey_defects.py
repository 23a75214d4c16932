"""The upgrade journey fails on each upgrade defect, naming the step, and passes on a clean service.

Each run is the packaged journey suite in a subprocess (`--im-defect NAME`, the defect on every
reference server the run starts, the journey's private one included), with --alluredir, so the
step names are read back from the `im-journey.json` the run wrote — what the sign-off reads.
"""

from __future__ import annotations

import concurrent.futures
import json

import pytest
from matrix_runner import CONFIG, Run, execute

pytestmark = pytest.mark.slow

SUITE = "suites/test_upgrade.py"
EXPECTED: dict[str | None, str | None] = {
    None: None,
    "history_lost_on_upgrade": "written before -> readable after: history pages",
    "old_tokens_refused": "old credentials accepted within the transition window",
    "activation_stuck": "activation lag of each newly promised feature within its bound",
}
RUN_TIMEOUT_S = 180.0


@pytest.fixture(scope="module")
def journeys(tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, tuple[Run, dict]]:
    work = tmp_path_factory.mktemp("journey-defects")
    config = work / "im-harness.toml"
    config.write_text(CONFIG)

    def one(defect: str | None) -> tuple[Run, dict]:
        label = defect or "clean"
        results = work / f"allure-{label}"
        run = execute(Run(defect, [SUITE]), junit=work / f"{label}.xml", config=config,
                      timeout_s=RUN_TIMEOUT_S, extra_args=["--alluredir", str(results)],
                      drop_env=("IM_HARNESS_DEFECTS",))
        journey = results / "im-journey.json"
        return run, (json.loads(journey.read_text()) if journey.exists() else {})

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        done = dict(zip(EXPECTED, pool.map(one, EXPECTED), strict=True))
    return done


def _failed_steps(record: dict) -> list[str]:
    return [s["name"] for s in record.get("steps", []) if s["status"] == "failed"]


def test_clean_service_passes_the_journey(journeys: dict) -> None:
    run, record = journeys[None]
    assert run.returncode == 0, run.tail()
    assert run.passed, run.tail()
    assert record["steps"], record
    assert not _failed_steps(record), record
    assert record["rollback"].startswith("refused: reference service release 1: im-ref: "), record
    assert set(record["lags"]) >= {"recall", "receipts"}, record["lags"]


@pytest.mark.parametrize("defect", [d for d in EXPECTED if d])
def test_upgrade_defect_fails_the_named_step(journeys: dict, defect: str) -> None:
    run, record = journeys[defect]
    assert run.returncode == 1, f"{defect}: exit {run.returncode}\n{run.tail()}"
    assert run.failed, run.tail()
    step = EXPECTED[defect]
    assert step in _failed_steps(record), (
        f"{defect}: the journey did not fail at {step!r}; failed: {_failed_steps(record)}")
    assert "upgrade journey failed at: " in run.output, run.tail()


def test_records_land_in_the_results_folder(journeys: dict) -> None:
    _, record = journeys[None]
    assert (record["old"], record["new"]) == ("old", "new")
    assert record["infos"]["before"]["protocol"] == "v1"
    assert record["infos"]["after"]["protocol"] == "v2"
