"""Configuration export and import: file formats, the import plan, and the command line.

``python -m pydatacoll.configio export|import FILE --api URL`` (see ``__main__``). The
package is not called ``pydatacoll.config``: that name is the settings module.
"""
