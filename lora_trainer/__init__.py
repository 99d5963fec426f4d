"""lora_trainer: kohya-format LoRA training for Stable Diffusion, inside the WebUI or headless.

Importing the package is cheap on purpose (the WebUI imports extensions at
start-up): torch and friends are imported by the modules that need them.
"""

__version__ = "0.1.0"
