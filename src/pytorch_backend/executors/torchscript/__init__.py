"""TorchScript models (``model.pt``): argument binding and the executor."""
