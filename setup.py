"""Packages of the wheel: `harness` and its subpackages, plus the repository's top-level
`suites/` and `loadtests/` installed as `harness.suites` and `harness.loadtests`, so that the
installed product carries them and `pytest --pyargs harness.suites` runs from any directory."""

from setuptools import find_packages, setup

MAPPED = {"harness.suites": "suites", "harness.loadtests": "loadtests"}

# budgets/ holds data only; listed so that setuptools ships it as one (and does not warn)
DATA_PACKAGES = ["harness.loadtests.budgets"]

setup(
    packages=[*find_packages(include=["harness", "harness.*"]), *MAPPED, *DATA_PACKAGES],
    package_dir=MAPPED,
)
