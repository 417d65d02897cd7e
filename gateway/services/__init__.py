"""The flows, on the core and the ports: the pipeline (frames -> signed messages -> a sink), battery
ECU diagnostics, the forwarder (outbox -> uplink), replay, and over-the-air updates. Time is given to
them as ``now`` (docs/adr/0006-single-threaded-main-loop.md).
"""
