"""What the runtime and the traffic agents tell each other, as frozen dataclasses.

Three kinds of value cross the process boundary between :mod:`meshemu.traffic.runtime` and
an agent (:mod:`meshemu.traffic.agent`):

- the agent's **configuration** (:class:`AgentConfig`), written to ``<node>.json`` by
  :func:`write_agent_config` and read back, validated, by :func:`read_agent_config`;
- **commands** to a running agent, one line each on its stdin: ``go <start_unix_ns>
  <end_unix_ns>`` (:class:`Go`: the traffic's time zero and end, sent once every agent is
  up), ``targets <json>`` (:class:`Targets`: an inference client's servers, nearest first,
  sent when the ranking changes), ``stop`` (:class:`Stop`);
- **reports** from an agent, one line each on its stdout: ``ready`` (:class:`Ready`: socket
  bound, files open), ``done <unix_ns>`` (:class:`Done`: the node's own sending work is
  over), ``status <json>`` (:class:`AgentStatus`: counters, written at exit).

:func:`parse_command` and :func:`parse_report` turn a line back into its dataclass; a
malformed line raises :class:`~meshemu.errors.EmulationError`. The agent's own log goes to
its stderr, so stdout carries reports only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from meshemu.errors import EmulationError
from meshemu.traffic.schedule import Transfer

#: Niceness of the agents (negative: more CPU than ordinary processes; needs root).
NICE = -10
#: Inference server choice of a client.
TARGETS = ("nearest", "least_loaded")


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectiveConfig:
    """A node's part of one collective job.

    Attributes
    ----------
    job : str
        The job's name.
    rank : int
        This node's index in ``nodes``.
    nodes : tuple of str
        The job's nodes by rank.
    iterations : int
        Iterations to run (fewer when the traffic ends first).
    compute_ms : float
        Compute time between a node's iterations.
    start_s : float
        Start of iteration 0 after the traffic's time zero.
    plan : tuple of Transfer
        The iteration's transfers (:func:`meshemu.traffic.schedule.collective_plan`).
    flow_ids, pace_bps : tuple
        Flow id and pacing rate of each transfer.
    """

    job: str
    rank: int
    nodes: tuple[str, ...]
    iterations: int
    compute_ms: float
    start_s: float
    plan: tuple[Transfer, ...]
    flow_ids: tuple[int, ...]
    pace_bps: tuple[float, ...]

    def __post_init__(self) -> None:
        where = f"collective {self.job!r}"
        _check(
            0 <= self.rank < len(self.nodes),
            where,
            f"rank {self.rank} not in 0..{len(self.nodes) - 1}",
        )
        _check(
            len(self.flow_ids) == len(self.plan) == len(self.pace_bps),
            where,
            "plan, flow_ids and pace_bps differ in length",
        )
        _check(
            self.iterations >= 0 and self.compute_ms >= 0,
            where,
            "iterations and compute_ms must be >= 0",
        )
        p = len(self.nodes)
        for i, t in enumerate(self.plan):
            _check(
                t.index == i
                and 0 <= t.src < p
                and 0 <= t.dst < p
                and all(0 <= d < len(self.plan) for d in t.deps),
                where,
                f"bad transfer {t}",
            )
        _check(all(r > 0 for r in self.pace_bps), where, "pace_bps must be > 0")


@dataclass(frozen=True)
class InferenceClientConfig:
    """A ground user sending inference requests.

    Attributes
    ----------
    job : str
        The workload's name (the key of its :class:`Targets` updates).
    servers : tuple of str
        Candidate servers, nearest first at the start.
    times_s : tuple of float
        Request times after the traffic's time zero.
    request_bytes, response_bytes : int
        Message sizes.
    deadline_ms : float
        A response later than this is a miss.
    target : str
        ``nearest`` or ``least_loaded``.
    pace_bps : float
        Pacing rate of the requests.
    flow_req, flow_resp : mapping of str to int
        Flow id per server, of the requests and of the responses.
    id_base : int
        Request id of the first request (the next ones count up).
    """

    job: str
    servers: tuple[str, ...]
    times_s: tuple[float, ...]
    request_bytes: int
    response_bytes: int
    deadline_ms: float
    target: str
    pace_bps: float
    flow_req: Mapping[str, int]
    flow_resp: Mapping[str, int]
    id_base: int

    def __post_init__(self) -> None:
        where = f"inference client {self.job!r}"
        _check(bool(self.servers), where, "no servers")
        _check(self.target in TARGETS, where, f"target {self.target!r} not one of {TARGETS}")
        _check(
            set(self.flow_req) == set(self.servers) == set(self.flow_resp),
            where,
            "flow_req and flow_resp must name every server",
        )
        _check(
            self.pace_bps > 0 and self.request_bytes > 0 and self.response_bytes > 0,
            where,
            "sizes and pace_bps must be > 0",
        )


@dataclass(frozen=True)
class InferenceServerConfig:
    """A node answering the requests of one flow.

    Attributes
    ----------
    request_flow, response_flow : int
        Flow ids of the requests and of the responses.
    response_bytes : int
        Size of a response.
    pace_bps : float
        Pacing rate of the responses.
    """

    request_flow: int
    response_flow: int
    response_bytes: int
    pace_bps: float

    def __post_init__(self) -> None:
        _check(
            self.response_bytes > 0 and self.pace_bps > 0,
            f"inference server of flow {self.request_flow}",
            "sizes and pace must be > 0",
        )


@dataclass(frozen=True)
class StreamConfig:
    """Paced unreliable packets: constant rate (bulk, ``rate_bps``) or a capture's timing
    (replay, ``times_s`` and ``ip_bytes``).

    Attributes
    ----------
    flow_id : int
    dst : str
        Receiving node.
    start_s : float
        Start after the traffic's time zero.
    duration_s : float or None
        How long it sends (None: until the traffic ends).
    rate_bps : float or None
        Bulk: the rate of full-size packets.
    times_s, ip_bytes : tuple
        Replay: send times (after ``start_s``) and IP packet sizes.
    """

    flow_id: int
    dst: str
    start_s: float = 0.0
    duration_s: float | None = None
    rate_bps: float | None = None
    times_s: tuple[float, ...] = ()
    ip_bytes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        where = f"stream {self.flow_id}"
        if self.rate_bps is not None:
            _check(
                self.rate_bps > 0 and not self.times_s,
                where,
                "a bulk stream has rate_bps > 0 and no times_s",
            )
        else:
            _check(
                len(self.times_s) == len(self.ip_bytes),
                where,
                "times_s and ip_bytes differ in length",
            )

    @property
    def is_bulk(self) -> bool:
        """Constant rate (bulk) rather than replayed timing."""
        return self.rate_bps is not None


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent needs.

    Attributes
    ----------
    node : str
        The node the agent runs in.
    addrs : mapping of str to str
        Node address of every node the traffic involves.
    out_dir : str
        Where the agent writes ``<node>.*.csv``.
    bind : str
        Address the socket binds to.
    start_unix_ns, end_unix_ns : int
        The traffic's time zero and end; with ``control`` the :class:`Go` command replaces
        them.
    control : bool
        Take commands on stdin (wait for :class:`Go` before sending, take :class:`Targets`
        and :class:`Stop`; stdin closing stops the agent).
    sample : mapping of int to int
        Flows whose received packets are recorded every n-th only.
    collectives, inference_clients, inference_servers, streams : tuple
        The node's roles.
    nice : int
        Niceness the agent asks for.
    drop_every : int
        Test hook: drop every n-th received data packet (0: none), to exercise recovery.
    """

    node: str
    addrs: Mapping[str, str]
    out_dir: str
    bind: str = "0.0.0.0"
    start_unix_ns: int = 0
    end_unix_ns: int = 0
    control: bool = False
    sample: Mapping[int, int] = field(default_factory=dict)
    collectives: tuple[CollectiveConfig, ...] = ()
    inference_clients: tuple[InferenceClientConfig, ...] = ()
    inference_servers: tuple[InferenceServerConfig, ...] = ()
    streams: tuple[StreamConfig, ...] = ()
    nice: int = NICE
    drop_every: int = 0

    def __post_init__(self) -> None:
        where = f"agent {self.node!r}"
        _check(
            self.control or self.end_unix_ns > 0,
            where,
            "needs end_unix_ns or control (a go command)",
        )
        known = set(self.addrs)
        for s in self.streams:
            _check(s.dst in known, where, f"stream to {s.dst!r}, which has no address")
        for c in self.inference_clients:
            _check(set(c.servers) <= known, where, f"servers {c.servers} lack addresses")
        _check(all(n > 0 for n in self.sample.values()), where, "sample periods must be > 0")
        _check(self.drop_every >= 0, where, "drop_every must be >= 0")


def _check(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise EmulationError(f"traffic agent configuration: {where}: {what}")


def config_to_dict(cfg: AgentConfig) -> dict[str, Any]:
    """The JSON-able form of ``cfg`` (transfers as ``[index, src, dst, nbytes, deps,
    phase]``)."""
    d = asdict(cfg)
    d["addrs"] = dict(cfg.addrs)
    d["sample"] = {str(k): v for k, v in cfg.sample.items()}
    for c, dc in zip(cfg.collectives, d["collectives"]):
        dc["plan"] = [[t.index, t.src, t.dst, t.nbytes, list(t.deps), t.phase] for t in c.plan]
    return d


def config_from_dict(d: Mapping[str, Any]) -> AgentConfig:
    """:class:`AgentConfig` from its JSON-able form (:func:`config_to_dict`), validated.

    Raises
    ------
    EmulationError
        A field is missing, unknown or of the wrong type, or a value is out of range.
    """
    try:
        return _config_from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, EmulationError):
            raise
        raise EmulationError(f"traffic agent configuration: malformed: {exc!r}") from exc


def _known(cls: type, d: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    extra = set(d) - names
    if extra:
        raise EmulationError(
            f"traffic agent configuration: {cls.__name__}: unknown fields "
            f"{sorted(extra)} (allowed: {sorted(names)})"
        )
    return dict(d)


def _config_from_dict(d: Mapping[str, Any]) -> AgentConfig:
    d = _known(AgentConfig, d)
    cols = []
    for c in d.pop("collectives", []):
        c = _known(CollectiveConfig, c)
        cols.append(
            CollectiveConfig(
                job=str(c["job"]),
                rank=int(c["rank"]),
                nodes=tuple(map(str, c["nodes"])),
                iterations=int(c["iterations"]),
                compute_ms=float(c["compute_ms"]),
                start_s=float(c["start_s"]),
                plan=tuple(
                    Transfer(int(i), int(s), int(t), int(n), tuple(map(int, deps)), int(ph))
                    for i, s, t, n, deps, ph in c["plan"]
                ),
                flow_ids=tuple(map(int, c["flow_ids"])),
                pace_bps=tuple(map(float, c["pace_bps"])),
            )
        )
    clients = []
    for c in d.pop("inference_clients", []):
        c = _known(InferenceClientConfig, c)
        clients.append(
            InferenceClientConfig(
                job=str(c["job"]),
                servers=tuple(map(str, c["servers"])),
                times_s=tuple(map(float, c["times_s"])),
                request_bytes=int(c["request_bytes"]),
                response_bytes=int(c["response_bytes"]),
                deadline_ms=float(c["deadline_ms"]),
                target=str(c["target"]),
                pace_bps=float(c["pace_bps"]),
                flow_req={str(k): int(v) for k, v in c["flow_req"].items()},
                flow_resp={str(k): int(v) for k, v in c["flow_resp"].items()},
                id_base=int(c["id_base"]),
            )
        )
    servers = []
    for c in d.pop("inference_servers", []):
        c = _known(InferenceServerConfig, c)
        servers.append(
            InferenceServerConfig(
                request_flow=int(c["request_flow"]),
                response_flow=int(c["response_flow"]),
                response_bytes=int(c["response_bytes"]),
                pace_bps=float(c["pace_bps"]),
            )
        )
    streams = []
    for c in d.pop("streams", []):
        c = _known(StreamConfig, c)
        streams.append(
            StreamConfig(
                flow_id=int(c["flow_id"]),
                dst=str(c["dst"]),
                start_s=float(c.get("start_s", 0.0)),
                duration_s=None if c.get("duration_s") is None else float(c["duration_s"]),
                rate_bps=None if c.get("rate_bps") is None else float(c["rate_bps"]),
                times_s=tuple(map(float, c.get("times_s", ()))),
                ip_bytes=tuple(map(int, c.get("ip_bytes", ()))),
            )
        )
    return AgentConfig(
        node=str(d.pop("node")),
        addrs={str(k): str(v) for k, v in d.pop("addrs").items()},
        out_dir=str(d.pop("out_dir")),
        bind=str(d.pop("bind", "0.0.0.0")),
        start_unix_ns=int(d.pop("start_unix_ns", 0)),
        end_unix_ns=int(d.pop("end_unix_ns", 0)),
        control=_bool(d.pop("control", False)),
        sample={int(k): int(v) for k, v in d.pop("sample", {}).items()},
        collectives=tuple(cols),
        inference_clients=tuple(clients),
        inference_servers=tuple(servers),
        streams=tuple(streams),
        nice=int(d.pop("nice", NICE)),
        drop_every=int(d.pop("drop_every", 0)),
    )


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise EmulationError(
            f"traffic agent configuration: control must be true or false, not {v!r}"
        )
    return v


def write_agent_config(cfg: AgentConfig, path: Path | str) -> Path:
    """Write ``cfg`` as JSON to ``path`` (read back with :func:`read_agent_config`)."""
    p = Path(path)
    p.write_text(json.dumps(config_to_dict(cfg)))
    return p


def read_agent_config(path: Path | str) -> AgentConfig:
    """The :class:`AgentConfig` in the JSON file ``path``, validated.

    Raises
    ------
    EmulationError
        The file cannot be read, is not JSON, or is not a valid configuration.
    """
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EmulationError(f"traffic agent configuration {path}: {exc}") from exc
    if not isinstance(d, dict):
        raise EmulationError(f"traffic agent configuration {path}: not a JSON object")
    return config_from_dict(d)


# -- commands (runtime -> agent, stdin) -------------------------------------------------------
@dataclass(frozen=True)
class Go:
    """Start: the traffic's time zero and end (unix ns)."""

    start_unix_ns: int
    end_unix_ns: int

    def line(self) -> str:
        """The command as one line (with its newline)."""
        return f"go {self.start_unix_ns} {self.end_unix_ns}\n"


@dataclass(frozen=True)
class Targets:
    """An inference client's servers, nearest first."""

    job: str
    servers: tuple[str, ...]

    def line(self) -> str:
        """The command as one line (with its newline)."""
        return "targets " + json.dumps([self.job, list(self.servers)]) + "\n"


@dataclass(frozen=True)
class Stop:
    """Stop sending, flush the files, report the status and exit."""

    def line(self) -> str:
        """The command as one line (with its newline)."""
        return "stop\n"


Command = Go | Targets | Stop


def parse_command(line: str) -> Command:
    """The command in one line of an agent's stdin.

    Raises
    ------
    EmulationError
        Not a command.
    """
    word, _, rest = line.strip().partition(" ")
    try:
        if word == "go":
            a, b = rest.split()
            return Go(int(a), int(b))
        if word == "targets":
            job, servers = json.loads(rest)
            return Targets(str(job), tuple(map(str, servers)))
        if word == "stop" and not rest:
            return Stop()
    except (ValueError, TypeError) as exc:
        raise EmulationError(f"traffic agent: malformed command {line.strip()!r}") from exc
    raise EmulationError(
        f"traffic agent: unknown command {line.strip()!r} (commands: go, targets, stop)"
    )


# -- reports (agent -> runtime, stdout) --------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """The agent's socket is bound and its files are open."""

    def line(self) -> str:
        """The report as one line (with its newline)."""
        return "ready\n"


@dataclass(frozen=True)
class Done:
    """The node's own sending work (iterations, requests, streams) is over."""

    unix_ns: int

    def line(self) -> str:
        """The report as one line (with its newline)."""
        return f"done {self.unix_ns}\n"


@dataclass(frozen=True)
class AgentStatus:
    """An agent's counters, reported at exit (``traffic.json`` lists them per agent)."""

    node: str
    sent_packets: int = 0
    retransmissions: int = 0
    nacks_sent: int = 0
    nacks_received: int = 0
    acks_sent: int = 0
    probes: int = 0
    send_errors: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    messages_received: int = 0
    messages_acked: int = 0
    done: bool = False
    exit_unix_ns: int = 0
    cpu_s: float = 0.0
    max_rss_kib: int = 0

    def line(self) -> str:
        """The report as one line (with its newline)."""
        return "status " + json.dumps(asdict(self)) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgentStatus:
        """From the JSON form (unknown keys are an error)."""
        d = _known(cls, d)
        types = {f.name: f.type for f in fields(cls)}
        out: dict[str, Any] = {}
        for k, v in d.items():
            t = types[k]
            out[k] = (
                str(v)
                if t == "str"
                else bool(v)
                if t == "bool"
                else float(v)
                if t == "float"
                else int(v)
            )
        return cls(**out)


#: Counters of :class:`AgentStatus` an agent keeps while it runs.
COUNTERS: tuple[str, ...] = tuple(
    f.name
    for f in fields(AgentStatus)
    if f.type == "int" and f.name not in ("exit_unix_ns", "max_rss_kib")
)

Report = Ready | Done | AgentStatus


def parse_report(line: str) -> Report:
    """The report in one line of an agent's stdout.

    Raises
    ------
    EmulationError
        Not a report.
    """
    word, _, rest = line.strip().partition(" ")
    try:
        if word == "ready" and not rest:
            return Ready()
        if word == "done":
            return Done(int(rest))
        if word == "status":
            return AgentStatus.from_dict(json.loads(rest))
    except (ValueError, TypeError) as exc:
        raise EmulationError(f"traffic agent: malformed report {line.strip()!r}") from exc
    raise EmulationError(
        f"traffic agent: unknown report {line.strip()!r} (reports: ready, done, status)"
    )


def send_line(stream: Any, msg: Command | Report) -> bool:
    """Write ``msg``'s line to ``stream`` and flush; False when the other end is gone."""
    try:
        stream.write(msg.line())
        stream.flush()
        return True
    except (OSError, ValueError):
        return False
