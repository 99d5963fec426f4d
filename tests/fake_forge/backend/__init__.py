"""Stand-ins for Forge's ``backend`` package (its 2024 model code), for tests only; no Forge code."""
