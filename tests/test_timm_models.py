"""timm's own model tests, from the timm release this project pins, collect and pass the plugin's variants.

timm's ``tests/test_models.py`` selects the models of its feature-intermediates tests by module key
(``list_models(module=FEAT_INTER_FILTERS)``, 'deit' among them). This test fetches that file (and its conftest)
from the pinned release's source distribution at test time, never a copy kept here, imports the plugin before
collection (``pytest -p timm_deit_distill``) and runs those tests on the plugin's variants. It is skipped,
saying why, when the source distribution cannot be fetched (no network to the package index).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from timm_deit_distill.models import PLUGIN_VARIANTS

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"
# timm's tests whose models are list_models(module=FEAT_INTER_FILTERS, ...): its module-filtered tests.
MODULE_FILTERED = ("test_model_forward_intermediates", "test_model_forward_intermediates_features")
# timm skips fixed-size models above 256 px in these tests (its own 384 px DeiT included), with this reason.
SIZE_LIMIT = "Fixed input size model > limit."


def _pinned_timm() -> str:
    match = re.search(r"^timm==(\S+)$", CONSTRAINTS.read_text(), flags=re.M)
    assert match, f"{CONSTRAINTS} pins no timm version"
    return match.group(1)


def _fetch_timm_tests(version: str, where: Path) -> Path:
    """timm's tests/test_models.py and tests/conftest.py of ``version``, from its sdist, into a folder of ``where``."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                           "--disable-pip-version-check", "-q", "-d", str(where), f"timm=={version}"],
                          capture_output=True, text=True, timeout=600)
    sdist = where / f"timm-{version}.tar.gz"
    if proc.returncode != 0 or not sdist.is_file():
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"timm {version}'s source distribution could not be fetched with pip download: {last[0]}")
    tests = where / "timm_tests"
    tests.mkdir()
    with tarfile.open(sdist) as archive:
        for name in ("test_models.py", "conftest.py"):
            member = archive.extractfile(f"timm-{version}/tests/{name}")
            assert member is not None, name
            (tests / name).write_bytes(member.read())
    (tests / "pytest.ini").write_text("[pytest]\n")  # its own root: none of this project's pytest options
    return tests


def _run_pytest(tests: Path, *args: str) -> subprocess.CompletedProcess:
    selection = f"({' or '.join(MODULE_FILTERED)}) and ({' or '.join(PLUGIN_VARIANTS)})"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "test_models.py", "-p", "timm_deit_distill", "-p", "no:cacheprovider",
         "-c", "pytest.ini", "--rootdir", ".", "-W", "ignore::pytest.PytestUnknownMarkWarning", "-q",
         "-k", selection, *args],
        cwd=tests, capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_timms_module_filtered_model_tests_collect_and_pass_the_plugin_variants(tmp_path):
    tests = _fetch_timm_tests(_pinned_timm(), tmp_path)
    proc = _run_pytest(tests, "--junitxml", str(tmp_path / "report.xml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = {}
    for case in ET.parse(tmp_path / "report.xml").getroot().iter("testcase"):
        skipped = case.find("skipped")
        failed = case.find("failure") is not None or case.find("error") is not None
        results[case.get("name")] = "failed" if failed else (
            f"skipped: {skipped.get('message')}" if skipped is not None else "passed")
    expected = {f"{test}[1-{name}]" for test in MODULE_FILTERED for name in PLUGIN_VARIANTS}  # batch size 1
    assert set(results) == expected, f"collected {sorted(results)}"  # every variant, in both tests
    for case, outcome in sorted(results.items()):
        if case.endswith("_32]"):  # 32 px: run by timm, and passed
            assert outcome == "passed", f"{case}: {outcome}"
        else:  # 384 px: collected, then skipped by timm's own size rule for these tests, as timm's own DeiT 384
            assert outcome.startswith("skipped") and SIZE_LIMIT in outcome, f"{case}: {outcome}"
