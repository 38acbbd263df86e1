"""The live emulation: Mininet nodes, shaped links, routes, the real-time clock."""
