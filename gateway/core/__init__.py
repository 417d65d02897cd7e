"""The pure core: values in, values out (docs/architecture.md, "The rules").

Decoding frames through already-loaded DBC databases, the battery state and its counters, the SoH
estimate and forecast, passport and certificate payloads, COSE signing and the backend's chain check,
poll specs and passive ISO-TP reassembly, and the config and profile schemas (parsed from mappings
the composition read).
"""
