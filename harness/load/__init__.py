"""Load testing on the harness's adapters: metrics, budgets, scenarios, summaries (no locust here).

The scenarios register in `harness/load/scenarios.py` (built-ins in `units.py`). The locust layer
is `harness/load/user.py` (`IMUser`, the listeners) and `harness/load/bridge.py`: both import
gevent and are imported only from locustfiles such as `loadtests/locustfile.py`.
"""
