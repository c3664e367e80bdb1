"""An example third-party processor plugin for PyDataColl."""
