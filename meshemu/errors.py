"""meshemu's exceptions.

The tree, in one place::

    MeshemuError                      root of everything meshemu raises on purpose
    +-- SpecError(ValueError)         an input is malformed (carries field and source)
    |   +-- ScenarioError             a scenario file (or dict) is malformed or impossible
    |   |   +-- TLEError              a TLE/3LE line is malformed (shows the expected template)
    |   +-- ProfileError              a traffic profile or pcap is malformed
    |   +-- OptionsError              a command's option (duration, step, --out, a TLE group
    |                                 name, --url...) is unusable
    +-- RoutingError(ValueError)      unknown routing scheme, or a scheme that misbehaves
    +-- ReportError(ValueError)       a run directory (or one of its files) cannot be reported on
    +-- FetchError                    a download failed: the server is unreachable, answered
    |                                 an HTTP error, or sent no TLE data (`meshemu tle fetch`)
    +-- ViewError                     the browser view cannot serve: its port is taken, its
    |                                 JavaScript libraries are not installed (`meshemu view`)
    +-- ShaperError                   unknown shaper, or a shaper that cannot work on this kernel
    |   +-- LinkParamsError(ValueError)  impossible link parameters or ends
    +-- EmulationError                the live emulation cannot be built or run
    |   +-- NotRootError              a command that needs root was run without it
    |   +-- ResourceError             the scenario does not fit this machine (memory, limits)
    |   +-- CommandError              an `ip`/`tc`/... command failed (carries cmd and stderr)
    |   +-- Interrupted               SIGINT, SIGTERM or SIGHUP arrived (carries signum);
    |                                 the CLI exits 128 + signum after the teardown

Input errors also subclass ValueError so that generic callers can catch them as such.
Every message says what was wrong, quoting the bad value, and what is allowed instead.
"""

from __future__ import annotations

from collections.abc import Sequence


class MeshemuError(Exception):
    """Root of every error meshemu raises on purpose."""


class SpecError(MeshemuError, ValueError):
    """An input file (scenario, traffic profile) or option is malformed.

    Parameters
    ----------
    message : str
        What is wrong and what is allowed.
    field : str, optional
        Dotted path of the offending field (``constellation.shells[0].altitude_km``).
    source : str, optional
        File the value came from.
    """

    def __init__(self, message: str, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message)


class ScenarioError(SpecError):
    """A scenario is malformed or physically impossible (same parameters as SpecError)."""


class TLEError(ScenarioError):
    """A two-line (or three-line) element set is malformed."""


class ReportError(MeshemuError, ValueError):
    """A run directory (or one of its files) cannot be reported on."""


class ProfileError(SpecError):
    """A traffic profile (YAML) or a pcap to replay is malformed (parameters as SpecError)."""


class OptionsError(SpecError):
    """A command's option is out of range or malformed, or the output path is unusable."""


class FetchError(MeshemuError):
    """A download (``meshemu tle fetch``) failed: the server cannot be reached, it answered
    an HTTP error, or its answer holds no TLE data.

    Not a :class:`SpecError`: the input was well formed, the network or the server failed.
    """


class RoutingError(MeshemuError, ValueError):
    """An unknown or misbehaving routing scheme."""


class ViewError(MeshemuError):
    """The browser view (``meshemu view``, ``meshemu run --view``) cannot serve: the port is
    in use, the host cannot be bound, or the page's JavaScript libraries are not installed.

    A bad run directory is a :class:`ReportError`."""


class ShaperError(MeshemuError):
    """An unknown link shaper, or one that cannot work on this kernel."""


class LinkParamsError(ShaperError, ValueError):
    """Impossible link parameters or link ends (negative delay, loss > 1, long names...)."""


class EmulationError(MeshemuError):
    """The live emulation cannot be built or run."""


class NotRootError(EmulationError):
    """A command that needs root (network namespaces) was run without it."""

    def __init__(self, what: str = "meshemu run"):
        super().__init__(
            f"{what} needs root to create network namespaces and links; "
            f"run it with sudo (sudo .venv/bin/meshemu ...), or inside the VM in vagrant/ "
            f"(see README, 'Run it in a VM')"
        )


class ResourceError(EmulationError):
    """The scenario does not fit this machine."""


class Interrupted(EmulationError):
    """A signal (SIGINT, SIGTERM, SIGHUP) arrived while a teardown handler was active."""

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        super().__init__(f"received {signal.Signals(signum).name}; tearing the emulation down")


class CommandError(EmulationError):
    """An external command (ip, tc, ethtool, ...) failed.

    Parameters
    ----------
    cmd : sequence of str or str
        The command that failed.
    returncode : int
        Its exit status.
    stderr : str
        What it printed on stderr.
    """

    def __init__(self, cmd: Sequence[str] | str, returncode: int, stderr: str):
        self.cmd = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"command failed (exit {returncode}): {self.cmd}\n{self.stderr}")


def choices_message(what: str, value: object, valid: Sequence[str]) -> str:
    """Return "unknown WHAT 'VALUE'; please specify one of: a, b, c"."""
    return f"unknown {what} {value!r}; please specify one of: {', '.join(sorted(valid))}"
