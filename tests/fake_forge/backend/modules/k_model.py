"""Forge's ``KModel`` and discrete ``Prediction`` (``backend/modules/``), re-written for tests.

The predictor rebuilds the schedule from the scheduler's numbers (sqrt-linear
betas in float64, cumulative product, stored as float32 buffers ``alphas_cumprod``
/ ``sigmas`` / ``log_sigmas``) and names the prediction type."""
import torch


class Prediction(torch.nn.Module):
    def __init__(self, prediction_type="epsilon", linear_start=0.00085, linear_end=0.012, timesteps=1000):
        super().__init__()
        self.sigma_data = 1.0
        self.prediction_type = prediction_type
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("alphas_cumprod", alphas_cumprod.float())
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())


class KModel(torch.nn.Module):
    def __init__(self, model, predictor, storage_dtype, computation_dtype):
        super().__init__()
        self.storage_dtype = storage_dtype
        self.computation_dtype = computation_dtype
        self.diffusion_model = model
        self.predictor = predictor
