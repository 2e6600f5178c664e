"""Tiny models for testing and benchmarking the serving system rather than for predicting anything.

- ``Echo``: returns its float32 ``[B, D]`` input (times 1.0, so the output is a new tensor). Checks that
  tensors travel through the system unchanged.
- ``Sleeper``: stands in for an accelerator whose compute does not use this machine's CPU. Its forward sleeps
  ``per_batch_s + per_item_s * B`` seconds (plus ``stall_s`` with probability ``stall_probability``, drawn from
  its own seeded ``random.Random``) and returns ``x.sum(dim=1)``, float32 ``[B]``. Sleeping releases the GIL,
  as a CUDA kernel wait does, so batching and concurrency behave as they would on a GPU.
- ``Scale``: multiplies by a factor (NaN gives a version that answers NaN), optionally carrying a ballast
  parameter of a chosen size: versions of one model that differ in what they compute and in memory.
- ``Unloadable``: pickles, but its unpickling raises: an artifact that fails to load.

All hold only plain attributes, so they pickle (``mlflow.pytorch`` ``serialization_format="pickle"``).
"""

from __future__ import annotations

import random
import time

import torch
from torch import nn

FLOAT32_BYTES = 4


class Echo(nn.Module):
    """Identity on float32 ``[B, D]`` tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A new tensor equal to ``x``."""
        return x * 1.0


class Sleeper(nn.Module):
    """Sleeps a batch-size-dependent time, then returns the row sums of ``x``."""

    def __init__(
        self,
        per_batch_s: float = 0.005,
        per_item_s: float = 0.0002,
        stall_probability: float = 0.0,
        stall_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if per_batch_s < 0 or per_item_s < 0 or stall_s < 0 or not 0.0 <= stall_probability <= 1.0:
            raise ValueError("Sleeper needs non-negative times and a stall probability in [0, 1]")
        self.per_batch_s = per_batch_s
        self.per_item_s = per_item_s
        self.stall_probability = stall_probability
        self.stall_s = stall_s
        self.seed = seed
        self.rng = random.Random(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sleep for the batch's simulated compute time; return float32 ``[B]`` row sums."""
        delay_s = self.per_batch_s + self.per_item_s * x.shape[0]
        if self.stall_probability > 0.0 and self.rng.random() < self.stall_probability:
            delay_s += self.stall_s
        time.sleep(delay_s)
        return x.sum(dim=1)


class Scale(nn.Module):
    """Multiplies its float32 ``[B, D]`` input by ``factor``: versions that differ only in what they compute.

    ``ballast_bytes`` adds one frozen parameter of about that many bytes that ``forward`` never reads, so a test
    can give a version a known memory footprint (one tensor, so freeing it returns the memory to the OS).
    ``factor=float("nan")`` makes a version that answers NaN.
    """

    def __init__(self, factor: float, ballast_bytes: int = 0) -> None:
        super().__init__()
        self.factor = factor
        elements = ballast_bytes // FLOAT32_BYTES
        self.ballast = nn.Parameter(torch.zeros(elements), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * factor``, float32, same shape."""
        return x * self.factor


def _refuse_to_load() -> nn.Module:
    raise RuntimeError("this artifact is broken on purpose (Unloadable)")


class Unloadable(nn.Module):
    """A version whose artifact pickles fine and fails to load: unpickling it raises ``RuntimeError``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Never runs: the model cannot be loaded."""
        return x

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_refuse_to_load, ())
