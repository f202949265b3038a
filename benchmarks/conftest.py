import os
import sys

# bench_<op>.py files import the shared helpers as `common`.
sys.path.insert(0, os.path.dirname(__file__))

import common  # noqa: E402


def pytest_configure(config):
    """The paired fastops cases follow pytest-benchmark's round options, as every other case
    (converted as its fixture does: an option left at its default is still the string)."""
    common.ROUNDS.update(max_time=float(config.getoption("benchmark_max_time")),
                         min_rounds=int(config.getoption("benchmark_min_rounds")))
