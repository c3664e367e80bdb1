"""PyDataColl: a SCADA front-end processor built on Twisted."""

__version__ = "0.2.0.dev0"
