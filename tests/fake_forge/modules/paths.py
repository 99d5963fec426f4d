"""Where the fake Forge keeps its models (tests set it to a tmp folder)."""
models_path = "models"
