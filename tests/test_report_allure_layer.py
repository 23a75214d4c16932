"""The allure-pytest layer, run for real through pytester against the embedded services.

The layer arrives through its `pytest11` entry point, as in a user's run: no `-p` here.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

import harness.reference

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.slow
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
addopts = -p no:cacheprovider
"""

SUITE = '''
import os
import pytest


@pytest.mark.capability("chat")
async def test_send(im_user, endpoint, oracle, fault_timeline):
    alice = await im_user("alice")
    bob = await im_user("bob")
    await alice.send(bob, "hello")
    await bob.recorder.wait_messages(1)
    key = endpoint.settings.secrets["app_key"]
    with open(os.environ["SECRETS_FILE"], "a") as fh:
        fh.write(key + "\\n")
    fault_timeline.instant("reset", {"side": "client"}, link="test-link")
    print(f"leaking the key {key} to stdout")
    if endpoint.name == "new":
        err = AssertionError(f"on purpose; key {key}")
        err.add_note("property failed (seed 4242): Falsifying example: step 1")
        raise err


@pytest.mark.capability("recall")
async def test_recall_needs_capability(endpoint):
    pass


@pytest.mark.parametrize("protocol", ["v1", "v2"])
async def test_client_protocol(endpoint, protocol):
    pass
'''


def results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in folder.glob("*-result.json")]


def labels(result: dict, name: str) -> list[str]:
    return [lb["value"] for lb in result["labels"] if lb["name"] == name]


def test_labels_attachments_and_no_secret_in_results(pytester: pytest.Pytester, tmp_path):
    pytester.makeini(INI)
    pytester.makepyfile(test_chat=SUITE)
    secrets_file = tmp_path / "secrets.txt"
    pytester._monkeypatch.setenv("SECRETS_FILE", str(secrets_file))
    out = tmp_path / "allure"
    run = pytester.runpytest_subprocess(f"--alluredir={out}", timeout=120)
    run.assert_outcomes(passed=6, failed=1, skipped=1)
    by_name = {r["name"]: r for r in results(out)}
    failed = by_name["test_send[new]"]
    assert labels(failed, "epic") == ["Chat"]
    assert labels(failed, "im_endpoint") == ["new"]
    assert labels(failed, "im_failure") == ["product"]
    assert labels(failed, "im_case") == ["test_chat.py::test_send"]
    params = {p["name"]: p["value"] for p in failed["parameters"]}
    assert {"endpoint", "adapter", "protocol", "tier"} <= set(params)
    assert failed["links"]
    assert failed["links"][0]["url"].startswith("file://")
    # the installed package's copy of the protocol, not a file of a checkout
    doc = Path(urllib.parse.unquote(urllib.parse.urlsplit(failed["links"][0]["url"]).path))
    assert doc.name == "PROTOCOL.md"
    assert doc.is_file()
    assert doc.parent == Path(harness.reference.__file__).resolve().parent
    names = {a["name"] for a in failed.get("attachments", [])}
    assert {"oracle: explanation and transcript", "hypothesis: shrunk steps and seed",
            "fault timeline"} <= names
    hyp = next(a for a in failed["attachments"] if a["name"].startswith("hypothesis"))
    assert "seed 4242" in (out / hyp["source"]).read_text()
    own = {tuple(sorted((p["name"], p["value"]) for p in r["parameters"]))
           for n, r in by_name.items() if n.startswith("test_client_protocol")}
    assert len(own) == 4  # the test's protocol is not overwritten by the endpoint's
    client = {p["name"]: p["value"] for p in by_name["test_client_protocol[new-v1]"]["parameters"]}
    assert (client["protocol"], client["new protocol"]) == ("'v1'", "'v2'")
    skipped = by_name["test_recall_needs_capability[old]"]
    assert labels(skipped, "im_failure") == ["unsupported"]
    endpoints = json.loads((out / "im-endpoints.json").read_text())
    assert "recall" in endpoints["new"]["capabilities"]
    keys = {k for k in secrets_file.read_text().split() if k}
    assert len(keys) == 2  # one app key per endpoint, both used by the test
    for path in out.rglob("*"):
        if path.is_file():
            body = path.read_bytes()
            assert not any(k.encode() in body for k in keys), f"secret in {path.name}"


def test_does_nothing_without_alluredir_or_allure(pytester: pytest.Pytester, tmp_path):
    pytester.makeini(INI)
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    run = pytester.runpytest_subprocess("-p", "no:allure_pytest", timeout=60)
    run.assert_outcomes(passed=1)
    plain = pytester.runpytest_subprocess(timeout=60)
    plain.assert_outcomes(passed=1)
    assert not list(pytester.path.rglob("*-result.json"))
