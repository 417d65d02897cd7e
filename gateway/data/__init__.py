"""Package data: the forecast prior (soh_prior.json, written by tools/soh_prior.py)."""
