"""The running example's model: a small MLP scoring (user, product) feature rows.

``forward`` takes float32 ``[B, NUM_FEATURES]`` rows built by ``tandem.common.features`` and returns float32
``[B]`` purchase probabilities. Training uses ``logits`` (the same network without the sigmoid) so the loss can
use the numerically stable ``BCEWithLogitsLoss``.
"""

from __future__ import annotations

import torch
from torch import nn

from tandem.common.features import NUM_FEATURES

HIDDEN_SIZES = (32, 16)


class Ranker(nn.Module):
    """MLP ``NUM_FEATURES -> 32 -> 16 -> 1`` with ReLU; outputs a probability per row."""

    def __init__(self, num_features: int = NUM_FEATURES) -> None:
        super().__init__()
        first, second = HIDDEN_SIZES
        self.net = nn.Sequential(
            nn.Linear(num_features, first),
            nn.ReLU(),
            nn.Linear(first, second),
            nn.ReLU(),
            nn.Linear(second, 1),
        )

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, float32 ``[B]``."""
        return self.net(features).squeeze(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Purchase probabilities in (0, 1), float32 ``[B]``."""
        return torch.sigmoid(self.logits(features))
