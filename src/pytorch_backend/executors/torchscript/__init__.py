"""TorchScript models (``model.pt``): the executor and its describer."""
