"""Where the fake WebUI keeps its models (tests set it to a tmp folder)."""
models_path = "models"
