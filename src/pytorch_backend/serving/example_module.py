"""The nn.Module served by the ``eager_module`` example (copied to ``eager_module/1/model.py``).

A user's module file: it imports only torch, and defines one ``nn.Module`` subclass, built with no
arguments. Its initial weights are random; ``model.pt`` beside it (a ``state_dict`` written by
``pytorch-backend examples``) holds the fixed weights of the ``mlp_batched`` example, so that
``OUTPUT__0 = [sum(x), sum(|x|), x[0] - x[3] + 1]`` per row only once the weights are loaded.
"""

import torch
from torch import nn


class EagerMlp(nn.Module):
    """Linear(4, 8) -> ReLU -> Linear(8, 3); ``forward(x)`` binds the config input ``x``."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))
