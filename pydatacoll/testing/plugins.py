"""A throw-away drop-in plugin package for tests of plugin discovery."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Mapping
from typing import Any


def drop_in_package(test: Any, files: Mapping[str, str], prefix: str = "fake_plugins") -> Any:
    """An importable package of a unique name holding ``files`` (name -> source, dedented),
    on ``sys.path`` until ``test`` ends (its ``addCleanup``)."""
    root = tempfile.mkdtemp()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    os.mkdir(os.path.join(root, name))
    with open(os.path.join(root, name, "__init__.py"), "w") as f:
        f.write("")
    for filename, source in files.items():
        with open(os.path.join(root, name, filename), "w") as f:
            f.write(textwrap.dedent(source))
    sys.path.insert(0, root)
    test.addCleanup(sys.path.remove, root)
    return importlib.import_module(name)
