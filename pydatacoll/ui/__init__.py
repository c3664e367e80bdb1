"""The status page (``/ui/``): plain HTML, CSS and JavaScript in ``static/``, no build step.

`pydatacoll.api.ui` serves the files; the page reads the REST API and the live stream.
"""
