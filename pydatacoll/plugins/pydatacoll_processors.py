"""The built-in processor plugins: formulas and limit checks."""

from pydatacoll.processing.formulas import FormulasFactory
from pydatacoll.processing.limits import LimitsFactory

formulas = FormulasFactory()
limits = LimitsFactory()
