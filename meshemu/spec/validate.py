"""One field validator for every spec file (scenarios, traffic profiles).

A :class:`Validator` reads values out of parsed YAML (dicts and lists) and raises the
caller's error type with the dotted path of the field, the bad value and what is allowed::

    v = Validator(ScenarioError, source="default.yaml")
    isl = v.mapping(data.get("isl"), "isl", ("pattern", "rate_mbps"), none_ok=True)
    rate = v.number(isl, "rate_mbps", "isl", 1000.0, lo=0, lo_open=True)
    # ScenarioError: default.yaml: isl.rate_mbps: must be a number > 0; got -5

Messages read the same in every file kind: ``must be <kind> <range>; got <value>``,
``unknown <key> <value>; please specify one of: ...``, ``unknown key <k>; allowed keys: ...``.
The node kinds of a scenario are defined here too, once for the whole package.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast

import yaml

#: Node kinds that are satellites (a link between two of them is an ISL).
SATELLITE_KINDS: tuple[str, ...] = ("sat", "compute")
#: Node kinds on the ground with a radio (a link between one of them and a satellite is a
#: GSL). A station with a backhaul PoP (a scenario's ``access:``) is a gateway.
RADIO_KINDS: tuple[str, ...] = ("station", "user", "datacenter")
#: Node kinds of the access network behind the gateways, reached over terrestrial links
#: only: points of presence and the internet servers behind them (:mod:`meshemu.spec.access`).
ACCESS_KINDS: tuple[str, ...] = ("pop", "server")
#: Node kinds on the ground.
GROUND_KINDS: tuple[str, ...] = RADIO_KINDS + ACCESS_KINDS
#: Node kinds, in the order nodes are numbered (satellites first, then ground nodes).
NODE_KINDS: tuple[str, ...] = SATELLITE_KINDS + GROUND_KINDS

#: What a node name may look like (it becomes a Mininet node and interface-name part).
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")

#: Marks a field without a default: missing means "is required".
REQUIRED: Any = ...


class ErrorType(Protocol):
    """An error class taking ``(message, field=..., source=...)``, like ScenarioError."""

    def __call__(
        self, message: str, field: str | None = ..., source: str | None = ...
    ) -> Exception: ...


def range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    """``> 0``, ``>= 1``, ``<= 5`` or ``in [1, 1000] (>= 1 and <= 1000)``; "" without bounds.

    Both notations are given for a closed range, so that a reader sees at a glance the
    interval and which side the value fell off.
    """
    lo_op = ">" if lo_open else ">="
    if lo is not None and hi is not None:
        return (
            f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}] "
            f"({lo_op} {_num(lo)} and <= {_num(hi)})"
        )
    if lo is not None:
        return f"{lo_op} {_num(lo)}"
    if hi is not None:
        return f"<= {_num(hi)}"
    return ""


def _num(x: float) -> str:
    """``1000000`` for whole numbers, ``0.5`` otherwise (never ``1e+06``)."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


class Validator:
    """Field checks that raise ``error(message, field=path, source=source)``.

    Parameters
    ----------
    error : type
        The exception class to raise (:class:`~meshemu.errors.ScenarioError`,
        :class:`~meshemu.errors.ProfileError`): called with the message and keyword
        arguments ``field`` and ``source``.
    source : str
        The file the values came from ("" for a dict), prefixed to every message.
    """

    def __init__(self, error: ErrorType, source: str = ""):
        self.error = error
        self.source = source

    def fail(self, path: str, message: str) -> NoReturn:
        """Raise the error for field ``path``."""
        raise self.error(message, field=path or None, source=self.source or None)

    def mapping(
        self, value: Any, path: str, allowed: Sequence[str], none_ok: bool = False
    ) -> dict[str, Any]:
        """``value`` as a dict whose keys are all in ``allowed`` (``None`` -> ``{}`` when
        ``none_ok``)."""
        if value is None and none_ok:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping; got {type(value).__name__} {value!r}")
        for k in value:
            if k not in allowed:
                self.fail(
                    f"{path}.{k}" if path else str(k),
                    f"unknown key {k!r}; allowed keys: {', '.join(allowed)}",
                )
        return value

    def number(
        self,
        d: dict[str, Any],
        key: str,
        path: str,
        default: Any = REQUIRED,
        lo: float | None = None,
        hi: float | None = None,
        lo_open: bool = False,
        integer: bool = False,
        null: bool = False,
    ) -> Any:
        """``d[key]`` as a finite float (an int with ``integer``) within the bounds.

        Missing: ``default``, or "is required" when there is none. ``null`` allows an
        explicit ``null`` (returned as None); without it ``null`` counts as missing.
        """
        p = f"{path}.{key}" if path else key
        kind = "an integer" if integer else "a number"
        rng = range_text(lo, hi, lo_open)
        x = d.get(key)
        if x is None:
            if key in d and null:
                return None
            if default is REQUIRED:
                self.fail(p, f"is required: {kind}{' ' + rng if rng else ''}")
            return default
        if (
            isinstance(x, bool)
            or not isinstance(x, (int, float))
            or not math.isfinite(x)
            or (integer and not float(x).is_integer())
        ):
            what = "an integer (a whole number)" if integer else "a finite number"
            self.fail(p, f"must be {what}{' or null' if null else ''}; got {x!r}")
        if (lo is not None and (x < lo or (lo_open and x == lo))) or (hi is not None and x > hi):
            self.fail(p, f"must be {kind} {rng}; got {x!r}")
        return int(x) if integer else float(x)

    def choice(
        self,
        d: dict[str, Any],
        key: str,
        path: str,
        choices: Sequence[str],
        default: Any = REQUIRED,
    ) -> str:
        """``d[key]``, one of ``choices`` (listed in the order given)."""
        p = f"{path}.{key}" if path else key
        if key not in d:
            if default is REQUIRED:
                self.fail(p, f"is required; please specify one of: {', '.join(choices)}")
            return cast(str, default)
        x = d[key]
        if not isinstance(x, str) or x not in choices:
            self.fail(
                p,
                f"unknown {key.replace('_', ' ')} {x!r}; please specify one of: "
                f"{', '.join(choices)}",
            )
        return x

    def flag(self, d: dict[str, Any], key: str, path: str, default: bool) -> bool:
        """``d[key]`` as true or false."""
        x = d.get(key, default)
        if not isinstance(x, bool):
            self.fail(f"{path}.{key}" if path else key, f"must be true or false; got {x!r}")
        return x

    def identifier(self, value: Any, path: str) -> str:
        """A name that becomes a node name (:data:`NAME_RE`)."""
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.fail(
                path,
                f"bad name {value!r}: use 1-31 letters, digits or '_', starting "
                f"with a letter (names become node names)",
            )
        return value

    def node_name(self, d: dict[str, Any], key: str, path: str) -> str:
        """``d[key]``, a reference to a node by name (checked against a scenario later)."""
        p = f"{path}.{key}" if path else key
        if key not in d:
            self.fail(p, "is required (a node name)")
        x = d[key]
        if not isinstance(x, str) or not x:
            self.fail(p, f"must be a node name; got {x!r}")
        return x

    def node_names(
        self,
        d: dict[str, Any],
        key: str,
        path: str,
        keyword: str,
        default: Any = REQUIRED,
        min_len: int = 1,
    ) -> tuple[str, ...] | str:
        """``d[key]``: ``keyword`` (a group the scenario defines) or a list of distinct node
        names, at least ``min_len`` of them."""
        p = f"{path}.{key}" if path else key
        if key not in d:
            if default is REQUIRED:
                self.fail(p, f"is required: {keyword!r} or a list of node names")
            return cast("tuple[str, ...] | str", default)
        x = d[key]
        if x == keyword:
            return keyword
        if not isinstance(x, list) or not all(isinstance(n, str) and n for n in x):
            self.fail(p, f"must be {keyword!r} or a list of node names; got {x!r}")
        if len(x) < min_len:
            self.fail(p, f"needs at least {min_len} node names; got {x!r}")
        if len(set(x)) != len(x):
            self.fail(p, f"lists a node twice: {x!r}")
        return tuple(x)

    def string(
        self, d: dict[str, Any], key: str, path: str, default: str, empty_ok: bool = True
    ) -> str:
        """``d[key]`` as a string (``null`` counts as missing)."""
        x = d.get(key)
        if x is None:
            return default
        if not isinstance(x, str) or (not x and not empty_ok):
            self.fail(
                f"{path}.{key}" if path else key,
                f"must be a {'non-empty ' if not empty_ok else ''}string; got {x!r}",
            )
        return x


def read_yaml(
    spec: str | Path, shipped_dir: Path, error: ErrorType, what: str, shipped_what: str
) -> tuple[Any, Path]:
    """Find ``spec`` (a path, or the name of a file shipped in ``shipped_dir``) and parse it.

    Returns the parsed document and the file's path; a missing file, unreadable file or bad
    YAML raises ``error`` naming the file (and, for a missing one, the shipped names).
    """
    path = Path(spec)
    if not path.is_file():
        shipped = shipped_dir / f"{spec}.yaml"
        if not shipped.is_file():
            names = ", ".join(sorted(q.stem for q in shipped_dir.glob("*.yaml")))
            raise error(
                f"no {what} {str(spec)!r}; give a path to a YAML file or one of the "
                f"shipped {shipped_what}: {names}"
            )
        path = shipped
    try:
        return yaml.safe_load(path.read_text()), path
    except yaml.YAMLError as exc:
        raise error(f"not valid YAML: {exc}", source=str(path)) from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror}", source=str(path)) from None
