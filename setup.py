"""Packages of the wheel: `harness` and its subpackages, plus the repository's top-level
`suites/` and `loadtests/` installed as `harness.suites` and `harness.loadtests`, so that the
installed product carries them and `pytest --pyargs harness.suites` runs from any directory."""

from setuptools import find_packages, setup

MAPPED = {"harness.suites": "suites", "harness.loadtests": "loadtests"}

setup(
    packages=[*find_packages(include=["harness", "harness.*"]), *MAPPED],
    package_dir=MAPPED,
)
