"""The registry of routing schemes: names, plug-in files and modules, entry points.

:func:`get_scheme` accepts, in this order:

- an instance of :class:`~meshemu.routing.RoutingScheme` (returned as it is);
- ``path/to/file.py:Class`` or ``package.module:Class`` (a researcher's own scheme);
- a name in :data:`SCHEMES` (the built-in schemes and those added with :func:`register`);
- a name published under the ``meshemu.routing`` entry point group by an installed package.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType

from meshemu.errors import RoutingError, choices_message
from meshemu.routing.base import ComputedScheme, RoutingScheme
from meshemu.routing.computed import ECMP, FewestHops, ShortestDelay
from meshemu.routing.daemons import FRRISIS, FRROSPF, BirdOSPF

#: Entry point group under which installed packages publish routing schemes.
ENTRY_POINT_GROUP = "meshemu.routing"

#: Registry of routing schemes by name.
SCHEMES: dict[str, type[RoutingScheme]] = {
    ShortestDelay.name: ShortestDelay,
    FewestHops.name: FewestHops,
    ECMP.name: ECMP,
    FRROSPF.name: FRROSPF,
    FRRISIS.name: FRRISIS,
    BirdOSPF.name: BirdOSPF,
}


def register(cls: type[RoutingScheme]) -> type[RoutingScheme]:
    """Class decorator: make a scheme available by its ``name`` (``--routing NAME``).

    Raises
    ------
    RoutingError
        ``cls`` is not a :class:`RoutingScheme` subclass.
    """
    if not (inspect.isclass(cls) and issubclass(cls, RoutingScheme)):
        raise RoutingError(f"register() takes a RoutingScheme subclass, got {cls!r}")
    SCHEMES[cls.name] = cls
    return cls


def _entry_points() -> dict[str, EntryPoint]:
    from importlib.metadata import entry_points

    try:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # broken metadata of some other package must not break meshemu
        return {}


def available_schemes() -> list[str]:
    """Names accepted by :func:`get_scheme` (built-in, registered, entry points)."""
    return sorted(set(SCHEMES) | set(_entry_points()))


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise RoutingError(
            f"routing scheme file {path} does not exist (give path/to/file.py:ClassName)"
        )
    mod_name = f"meshemu_user_scheme_{abs(hash(str(path.resolve())))}"
    sp = importlib.util.spec_from_file_location(mod_name, path)
    if sp is None or sp.loader is None:
        raise RoutingError(f"could not load routing scheme file {path}: not a Python file")
    mod = importlib.util.module_from_spec(sp)
    try:
        sp.loader.exec_module(mod)
    except Exception as exc:
        raise RoutingError(
            f"could not load routing scheme file {path}: {type(exc).__name__}: {exc}"
        ) from None
    return mod


def _load_class(spec: str) -> object:
    target, _, cls_name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        mod = _load_file(Path(target))
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as exc:
            raise RoutingError(
                f"could not import module {target!r} for routing scheme {spec!r}: {exc}"
            ) from None
    cls: object = getattr(mod, cls_name, None)
    if cls is None:
        names = [
            k
            for k, v in vars(mod).items()
            if inspect.isclass(v) and issubclass(v, RoutingScheme) and v is not RoutingScheme
        ]
        raise RoutingError(
            f"{target} has no class {cls_name!r}; routing schemes there: "
            f"{', '.join(names) or 'none'}"
        )
    return cls


def get_scheme(spec: str | RoutingScheme) -> ComputedScheme:
    """A routing scheme instance from a name, ``file.py:Class``, ``module:Class`` or an
    instance.

    Parameters
    ----------
    spec : str or RoutingScheme
        See the module docstring for the forms accepted.

    Returns
    -------
    ComputedScheme
        A :class:`RoutingScheme` instance, or an instance of a duck-typed plug-in class
        (one with a ``name`` and a ``forwarding_tables`` method).

    Raises
    ------
    RoutingError
        Unknown name (the message lists the valid ones), unloadable file or module, or a
        class that is not a routing scheme.
    """
    if isinstance(spec, RoutingScheme):
        return spec
    if not isinstance(spec, str) or not spec:
        raise RoutingError(f"routing scheme must be a name or file.py:Class, got {spec!r}")
    cls: object
    if ":" in spec:
        cls = _load_class(spec)
    elif spec in SCHEMES:
        cls = SCHEMES[spec]
    elif spec in (eps := _entry_points()):
        cls = eps[spec].load()
    else:
        raise RoutingError(
            choices_message("routing scheme", spec, available_schemes())
            + "; or give your own as path/to/file.py:ClassName"
        )
    if not (inspect.isclass(cls) and issubclass(cls, RoutingScheme)):
        return _duck_typed(spec, cls)
    try:
        return cls()
    except TypeError as exc:
        raise RoutingError(
            f"routing scheme {spec}: its class must be constructible without arguments ({exc})"
        ) from None


def _duck_typed(spec: str, obj: object) -> ComputedScheme:
    """A plug-in that does not subclass RoutingScheme but has ``name`` and
    ``forwarding_tables``: the object itself, or an instance if it is a class."""
    if callable(getattr(obj, "forwarding_tables", None)) and hasattr(obj, "name"):
        made: object = obj() if inspect.isclass(obj) else obj
        if isinstance(made, ComputedScheme):
            return made
    raise RoutingError(
        f"{spec}: {obj!r} is not a routing scheme (subclass "
        f"meshemu.routing.RoutingScheme and implement forwarding_tables)"
    )
