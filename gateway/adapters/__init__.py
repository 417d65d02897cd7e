"""Adapters: each wraps one third-party I/O library behind a port. Only ``gateway.app`` imports them."""
