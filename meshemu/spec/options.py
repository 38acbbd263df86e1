"""Options shared by ``meshemu plan`` and ``meshemu run``, checked before any work starts.

:class:`TimeSpan` is the emulated time line (start, duration, step, and the step count they
make), bounded so that a typo cannot ask for a billion steps; :func:`check_out_dir` makes
sure the output directory can be created and written before anything is computed.
Every problem is an :class:`~meshemu.errors.OptionsError` naming the option and the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from meshemu.errors import OptionsError

#: Shortest step (s): below it the plan's files and the per-step apply cost make no sense.
MIN_STEP_S = 1e-3
#: Most steps a plan or a run may have (a run at 1 s steps: 11.5 days).
MAX_STEPS = 1_000_000
#: Latest time (s after the scenario epoch) a plan may reach: SGP4 from one epoch is
#: meaningless years away, and the bound keeps the time arithmetic exact.
MAX_SPAN_S = 10 * 365.25 * 86400.0


def _finite(option: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"must be a number; got {value!r}", field=option)
    x = float(value)
    if not math.isfinite(x):
        raise OptionsError(f"must be a finite number of seconds; got {value!r}", field=option)
    return x


@dataclass(frozen=True)
class TimeSpan:
    """The time line of a plan or a run: steps ``start_s + k * step_s`` for
    ``k = 0 .. n_steps - 1``, with ``n_steps = floor(duration_s / step_s) + 1``.

    Build with :meth:`checked`, which raises :class:`OptionsError` for a value that is not
    finite, negative, a step below :data:`MIN_STEP_S`, more than :data:`MAX_STEPS` steps or
    a span beyond :data:`MAX_SPAN_S`.
    """

    duration_s: float
    step_s: float
    start_s: float
    n_steps: int

    @classmethod
    def checked(
        cls,
        duration_s: float,
        step_s: float = 1.0,
        start_s: float = 0.0,
        max_steps: int = MAX_STEPS,
    ) -> TimeSpan:
        """Validate the three options and count the steps.

        Parameters
        ----------
        duration_s, step_s, start_s : float
            Seconds: the span, the step, the start after the scenario epoch.
        max_steps : int
            Refuse more steps than this.

        Raises
        ------
        OptionsError
            Naming the option (``--duration``, ``--step``, ``--start``) and the value.
        """
        duration = _finite("--duration", duration_s)
        step = _finite("--step", step_s)
        start = _finite("--start", start_s)
        if duration < 0:
            raise OptionsError(f"must be >= 0 s; got {duration_s!r}", field="--duration")
        if step < MIN_STEP_S:
            raise OptionsError(f"must be at least {MIN_STEP_S:g} s; got {step_s!r}", field="--step")
        if start < 0:
            raise OptionsError(f"must be >= 0 s; got {start_s!r}", field="--start")
        if start + duration > MAX_SPAN_S:
            raise OptionsError(
                f"start + duration reach {start + duration:.3g} s after the "
                f"scenario's epoch; at most {MAX_SPAN_S:.3g} s (10 years): move "
                f"the epoch instead",
                field="--start",
            )
        n_steps = int(math.floor(duration / step + 1e-9)) + 1
        if n_steps > max_steps:
            raise OptionsError(
                f"{duration_s!r} s in steps of {step_s!r} s make {n_steps:,} "
                f"steps; at most {max_steps:,}: use a larger --step or a "
                f"shorter --duration",
                field="--duration",
            )
        return cls(duration, step, start, n_steps)


def check_out_dir(path: Path | str, field: str = "--out") -> Path:
    """Return ``path`` if it is, or can be made, a writable directory; creates nothing.

    Parameters
    ----------
    path : Path or str
        The directory.
    field : str
        The option it came from, named in the error (``--out``).

    Raises
    ------
    OptionsError
        ``path`` is an existing file, lies under a file, or the nearest existing directory
        on the way to it is not writable (read-only file system, permissions).
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OptionsError(
            f"{str(out)!r} exists and is not a directory; give a directory "
            f"(it is created if missing)",
            field=field,
        )
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OptionsError(
            f"cannot create {str(out)!r}: {str(probe)!r} is not a directory", field=field
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(probe) else "is not writable"
        raise OptionsError(f"cannot write {str(out)!r}: {str(probe)!r} {why}", field=field)
    return out


def make_out_dir(path: Path, field: str = "--out") -> Path:
    """Create the output directory checked by :func:`check_out_dir` (and its parents).

    Raises
    ------
    OptionsError
        The file system refused (``/proc``, a full disk, a race with another process).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionsError(f"cannot create {str(path)!r}: {exc.strerror}", field=field) from None
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
