"""A small two-input lip-sync-shaped network: face crops + mel audio window -> mouth frame.

Shaped like the model in Kiln's guide (image [B,6,320,320], audio [B,512,1,8] -> output
[B,3,320,320]) but small enough to export, quantize and benchmark on a laptop CPU in minutes.
"""

from __future__ import annotations

import torch
from torch import nn


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
    )


class LipSync(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.face = nn.Sequential(
            _down(6, w), _down(w, 2 * w), _down(2 * w, 4 * w), _down(4 * w, 4 * w)
        )
        self.audio = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * 8, 256), nn.ReLU(), nn.Linear(256, 4 * w)
        )
        self.decode = nn.Sequential(_up(8 * w, 4 * w), _up(4 * w, 2 * w), _up(2 * w, w), _up(w, w))
        self.head = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        face = self.face(image)  # [B, 4w, 20, 20]
        sound = self.audio(audio)[:, :, None, None].expand_as(face)
        return torch.sigmoid(self.head(self.decode(torch.cat([face, sound], dim=1))))


def build() -> LipSync:
    """Factory used by `source.factory: model:build` in the factory-format example."""
    return LipSync()
