"""The training core: optimizers, schedulers, noise, loss weighting, text
conditioning and the loop that ties them to a lent :class:`DiffusionModel`."""
