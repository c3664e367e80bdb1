"""Drop-in module: makes the ``example_counter`` processor known to PyDataColl."""

from pydatacoll_example.counter import CounterFactory

example_counter = CounterFactory()
