"""A PyTorch perceptron on the 30 breast_cancer features; weights: one safetensors state dict.

The feature scaling lives in the module as buffers, so the state dict is the whole model.
Trained with minibatch Adam from a seeded generator: the same seed gives the same weights.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

FILE = "torch-mlp.safetensors"


class Net(nn.Module):
    def __init__(self, features: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))
        blocks: list[nn.Module] = []
        width = features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.body = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.scale).squeeze(-1)


class TorchMLP:
    def __init__(self, features: int, hidden: int, layers: int, dropout: float, seed: int,
                 device: str) -> None:
        self.seed, self.device = seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = Net(features, hidden, layers, dropout).to(self.device).eval()

    def fit(self, x, y, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
            weight_decay: float = 1e-4):
        x = torch.as_tensor(np.asarray(x, np.float32), device=self.device)
        y = torch.as_tensor(np.asarray(y, np.float32), device=self.device)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            self.net.mean.copy_(x.mean(0))
            self.net.scale.copy_(x.std(0) + 1e-6)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        self.net.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen).to(self.device)
            for lo in range(0, len(x), batch_size):
                rows = order[lo:lo + batch_size]
                opt.zero_grad()
                loss_fn(self.net(x[rows]), y[rows]).backward()
                opt.step()
        self.net.eval()
        return self

    def predict(self, x):
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
            return torch.sigmoid(logits).cpu().numpy()

    def save(self, folder: str) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, os.path.join(folder, FILE))

    def load(self, folder: str) -> None:
        self.net.load_state_dict(load_file(os.path.join(folder, FILE), device=str(self.device)))
        self.net.eval()


def build(features: int = 30, hidden: int = 64, layers: int = 2, dropout: float = 0.1,
          seed: int = 0, device: str = "cpu") -> TorchMLP:
    return TorchMLP(features, hidden, layers, dropout, seed, device)
