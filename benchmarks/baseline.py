"""The reference to beat: the paper implemented the way a researcher would write it first.

Every window is materialised as its own float32 copy, the CAE is plain Conv3d/ConvTranspose3d
exactly per Table 3, batches come from a torch DataLoader, Adam, fp32. Used by
``benchmarks/run.py``; not part of the package.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def materialise_windows(labels: np.ndarray, length: int, stride: int, crop: int) -> torch.Tensor:
    """All windows of one stack as a float32 tensor (n, 1, l, crop, crop), values -1/0/+1."""
    depth = labels.shape[0]
    windows = [
        labels[z : z + length, :crop, :crop].astype(np.float32) - 1.0
        for z in range(0, depth - length + 1, stride)
    ]
    return torch.from_numpy(np.stack(windows)[:, None])


class BaselineCAE(nn.Module):
    """Table 3 as nn.Sequential of Conv3d/ConvTranspose3d (crop 224, 3 conv layers)."""

    def __init__(self, length: int, hidden: int = 128, latent: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv3d(1, 8, (1, 3, 3), (1, 2, 2)),
            nn.ReLU(),
            nn.Conv3d(8, 16, (1, 3, 3), (1, 2, 2)),
            nn.ReLU(),
            nn.Conv3d(16, 16, (length, 3, 3), (1, 2, 2)),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(11664, hidden),
            nn.ReLU(),
            nn.Linear(hidden, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 11664),
            nn.ReLU(),
            nn.Unflatten(1, (16, 1, 27, 27)),
            nn.ConvTranspose3d(16, 16, (length, 3, 3), (1, 2, 2)),
            nn.ReLU(),
            nn.ConvTranspose3d(16, 8, (1, 3, 3), (1, 2, 2)),
            nn.ReLU(),
            nn.ConvTranspose3d(8, 1, (1, 3, 3), (1, 2, 2), output_padding=(0, 1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def baseline_loader(windows: torch.Tensor, batch_size: int = 2, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(windows), batch_size=batch_size, shuffle=True, generator=generator
    )
