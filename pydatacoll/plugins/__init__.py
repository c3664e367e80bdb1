"""The ``twisted.plugin`` drop-in package for PyDataColl's extension points.

A module here (or in a ``pydatacoll/plugins/`` directory without ``__init__.py`` that
another distribution installs anywhere on ``sys.path``) names objects providing
`pydatacoll.interfaces.IProcessorFactory`; `pydatacoll.processing.loader` finds them
with ``getPlugins``. See docs/plugins.rst.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821 (the package's own __path__)
__all__: list[str] = []
