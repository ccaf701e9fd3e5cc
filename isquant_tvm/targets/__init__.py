"""Target presets, build, export (with cross-compilation) and running (local VM or RPC)."""
