"""One plugin discovery for every kind of plugin (protocol drivers, processors).

`discover` collects the providers of a zope Interface: the built-ins first, then what
``twisted.plugin`` finds in a plugin package (``pydatacoll.plugins`` and the drop-ins
of installed packages). One policy for all kinds:

- each provider is checked with ``verifyObject`` and must have a non-empty string
  ``name``; one that fails is refused, with the reason;
- the same provider object found twice (a built-in that is also listed as a drop-in)
  counts once;
- a name provided by two different providers is refused for all of them: which one is
  meant cannot be known, and running the wrong driver or processor is worse than
  running none. The refusal names the modules, so the operator can remove one.

Refusals are returned (``refused``: name -> reason) for the caller to show where an
operator looks: the log, the plugin list of the REST API, a device's status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from twisted.plugin import getPlugins
from zope.interface.exceptions import Invalid
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

#: The longest refusal reason kept (it is shown in API answers and logs).
MAX_REASON = 500


@attrs.frozen
class Discovered:
    """What `discover` found: usable providers by name, and refused names with why."""

    found: dict[str, Any]
    refused: dict[str, str]


def _module(provider: Any) -> str:
    return type(provider).__module__


def discover(
    interface: InterfaceClass,
    package: Any = None,
    *,
    builtins: Iterable[Any] = (),
    kind: str = "plugin",
) -> Discovered:
    """The providers of ``interface``: ``builtins``, then ``package``'s plugins.

    ``package`` is the drop-in package to search (the callers pass
    ``pydatacoll.plugins``); None searches none. ``kind`` words the refusal reasons
    ("protocol driver").
    """
    candidates = list(builtins)
    if package is not None:
        candidates += list(getPlugins(interface, package))  # type: ignore[arg-type]
    by_name: dict[str, list[Any]] = {}
    refused: dict[str, str] = {}
    for provider in candidates:
        try:
            verifyObject(interface, provider)
            name = provider.name
            if not isinstance(name, str) or not name:
                raise Invalid("its name is not a non-empty string")
        except Invalid as e:
            label = str(getattr(provider, "name", None) or _module(provider))
            refused[label] = (f"{_module(provider)}: does not provide {interface.getName()} ({e})")[
                :MAX_REASON
            ]
            continue
        providers = by_name.setdefault(name, [])
        if not any(provider is seen for seen in providers):
            providers.append(provider)
    found: dict[str, Any] = {}
    for name, providers in by_name.items():
        if len(providers) > 1:
            modules = ", ".join(sorted(_module(p) for p in providers))
            refused[name] = f"the {kind} name {name!r} is provided more than once ({modules})"[
                :MAX_REASON
            ]
        else:
            found[name] = providers[0]
    return Discovered(found, refused)
