"""PyDataColl's tests.

Hypothesis runs without its per-example deadline: a property test judges results, not
speed, and on a loaded two-core CI machine a slow example made a correct test "flaky".
Timing is tested where it matters, by the benchmarks and the timed integration tests.
"""

from hypothesis import settings

settings.register_profile("pydatacoll", deadline=None)
settings.load_profile("pydatacoll")
