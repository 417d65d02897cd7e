"""Stand-ins for what a user has and the project does not: the simulated Nissan Leaf battery ECU
(broadcast frames and ISO-TP diagnostics, with faults), a throw-away local mosquitto, and the demo that
runs them against the real daemon.
"""
