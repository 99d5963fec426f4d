"""Forge's diffusion engines (``backend/diffusion_engine/``) for tests: what the adapter reads."""


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision=None):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    def __init__(self, forge_objects, is_inpaint=False):
        self.is_inpaint = is_inpaint
        self.forge_objects = forge_objects
        self.forge_objects_original = forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = forge_objects.shallow_copy()
        self.current_lora_hash = str([])
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False


class StableDiffusion(ForgeDiffusionEngine):
    def __init__(self, forge_objects, is_inpaint=False):
        super().__init__(forge_objects, is_inpaint)
        self.is_sd1 = True


class StableDiffusionXL(ForgeDiffusionEngine):
    def __init__(self, forge_objects, is_inpaint=False):
        super().__init__(forge_objects, is_inpaint)
        self.is_sdxl = True
