"""The sign-off report: parity table, verdict, Allure results and the HTML report (no framework).

`harness/pytest_allure.py` labels the suites' Allure results; this package reads them (and the
JUnit XML), adds the load results and the verdict, and runs Allure Report 3 to build the HTML.
"""
