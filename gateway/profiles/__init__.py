"""Built-in vehicle profiles (data files, one TOML each). See ``gateway.profile`` for the loader."""
