"""The fake WebUI's "SD Unet" option: a replacement UNet object when one is active."""
current_unet = None
