"""The composition roots, one per job: the daemon, the inspection, replay, verify, the signed commands,
the updater, and the command line that dispatches to them. They build the adapters, hand them to the
services as ports, and decide nothing themselves (``wiring`` holds what they build alike).
"""
