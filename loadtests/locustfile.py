"""The harness's load scenarios as a locustfile: the whole file a team needs in its own repository.

Example::

    locust -f loadtests/locustfile.py --headless -u 10 -r 10 -t 10s \
        --scenario chat --endpoint new --csv reports/chat --html reports/chat.html

`im-harness load` and `python -m harness.load compare` run the installed copy of this file.
The scenarios, their parameters and default budgets are registered in `harness.load.units`
(list them with `python -m harness.load list`); a team adds its own with
`harness.load.scenarios.scenario` here.
"""

from harness.load.user import IMUser


class HarnessUser(IMUser):
    """Runs whichever registered scenarios --scenario chooses, weighted by the plan."""
