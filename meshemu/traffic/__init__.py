"""Traffic: send schedules, the per-node agents and their measurements.

Data flow: a profile (:mod:`meshemu.spec.profile`, YAML in ``traffic/``) is resolved
against the scenario's nodes; :mod:`.schedule` turns it into send schedules and the
alpha-beta predictions (pure); :mod:`.runtime` runs it in the emulation, in three parts:
:mod:`.planning` (flows, jobs, one :class:`.config.AgentConfig` per node, paths,
predictions), :mod:`.supervision` (starts one agent per node and speaks to it over its
stdin/stdout, :mod:`.config`'s commands and reports) and :mod:`.collection` (the run
directory's traffic files and the summary). An agent (:mod:`.agent`, the event loop) plays
its node's roles (:mod:`.roles`) over one socket (:mod:`.transport`). Packets carry the
Scapy layer :class:`.header.MeshemuHeader` on UDP port 47000.
"""
