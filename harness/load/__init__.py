"""Load testing on the harness's adapters: metrics, budgets, scenarios, summaries (no locust here).

The locust layer lives in `loadtests/locustfile.py` and `harness/load/bridge.py` (which imports
gevent and is imported only from load-test modules).
"""
