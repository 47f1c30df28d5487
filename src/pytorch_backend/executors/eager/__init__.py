"""nn.Module models (a Python file and its state dict), compiled with ``torch.compile``."""
