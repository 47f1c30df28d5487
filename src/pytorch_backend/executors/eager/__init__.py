"""nn.Module models (a Python file and its state dict) and torch.export programs."""
