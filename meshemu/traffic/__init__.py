"""Traffic: workload profiles, send schedules, the per-node agents and their measurements.

Data flow: a profile (:mod:`.profile`, YAML in ``traffic/``) is resolved against the
scenario's nodes; :mod:`.schedule` turns it into send schedules and the alpha-beta
predictions (pure); :mod:`.runtime` starts one agent (:mod:`.agent`) per node inside the
emulation and collects what they measured into the run directory. Packets carry the Scapy
layer :class:`.header.MeshemuHeader` on UDP port 47000.
"""
