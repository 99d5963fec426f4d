"""Forge's text-encoder holders (``backend/nn/clip.py``, ``backend/nn/base.py``) for tests."""
import torch


class IntegratedCLIP(torch.nn.Module):
    """``transformer``: the Hugging Face CLIP text model; ``logit_scale`` as Forge keeps it."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.6055))


class ModuleDict(torch.nn.Module):
    def __init__(self, module_dict):
        super().__init__()
        for name, module in module_dict.items():
            self.add_module(name, module)


class ObjectDict:
    def __init__(self, object_dict):
        for name, value in object_dict.items():
            setattr(self, name, value)


class CLIPEmbeddingForTextualInversion(torch.nn.Module):
    """Forge's textual-inversion hook around a token embedding (backend/text_processing/classic_engine.py):
    it also keeps ``weight = wrapped.weight``, so the same Parameter sits in two modules' tables."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.weight = self.wrapped.weight
        self.fixes = None

    def forward(self, input_ids):
        return self.wrapped(input_ids)
