"""Adapters: each wraps one third-party I/O library behind a port (``files``: tomllib and cantools; ``fs``:
the one atomic writer the others share). Who may import them, and what they may import:
docs/architecture.md, "The rules".
"""
