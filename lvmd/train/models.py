"""The four LVM architectures of SPEC §2. Each maps (B, T, D) → (raw, unit), unit = normalize(raw).

Parameter names follow the original project's (LEGACY.md), so importing its checkpoints is a
key-for-key load.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lvmd.config import ModelConfig


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int = 100):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(pos * div)
        pe[0, :, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) → (B, T, d)
        return x + self.pe[:, : x.size(1)]


class TransformerLVM(nn.Module):
    def __init__(self, dim: int, d_model: int = 512, nhead: int = 8, num_layers: int = 4,
                 ff: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.input_proj = nn.Linear(dim, d_model)
        self.pos_encoder = SinusoidalPositions(d_model)
        layer = nn.TransformerDecoderLayer(d_model, nhead, ff, dropout, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, num_layers)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model),
                                  nn.Linear(d_model, dim))
        self._masks: dict[tuple, torch.Tensor] = {}

    def _causal(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, device)
        if key not in self._masks:  # built once per (T, device): no allocation per step
            self._masks[key] = nn.Transformer.generate_square_subsequent_mask(t, device=device)
        return self._masks[key]

    def forward(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pos_encoder(self.input_proj(ctx))                      # (B, T, d_model)
        mask = self._causal(x.size(1), x.device)
        # is_causal=True: without it torch checks the mask against a causal one on every call
        # (`bool((mask == causal).all())`), a host sync per step.
        h = self.transformer_decoder(x, x, tgt_mask=mask, memory_mask=mask,  # tgt = memory = x
                                     tgt_is_causal=True, memory_is_causal=True)
        raw = self.head(h[:, -1])                                       # (B, D)
        return raw, F.normalize(raw, dim=-1)


class LSTMLVM(nn.Module):
    def __init__(self, dim: int, hidden: int = 512, layers: int = 2, dropout: float = 0.2):
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.output_proj = nn.Linear(hidden, dim)

    def forward(self, ctx):
        h, _ = self.lstm(ctx)                                            # (B, T, hidden)
        raw = self.output_proj(h[:, -1])
        return raw, F.normalize(raw, dim=-1)


class GRUBlock(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.gru = nn.GRU(d_model, d_model, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.norm(x + self.gru(x)[0])


class GRULVM(nn.Module):
    def __init__(self, dim: int, d_model: int = 512, blocks: int = 4):
        super().__init__()
        self.input_proj = nn.Linear(dim, d_model)
        self.blocks = nn.ModuleList(GRUBlock(d_model) for _ in range(blocks))
        self.output_proj = nn.Linear(d_model, dim)

    def forward(self, ctx):
        x = self.input_proj(ctx)                                         # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        raw = self.output_proj(x[:, -1])
        return raw, F.normalize(raw, dim=-1)


class AMNLVM(nn.Module):
    """Attention mixture: baseline = mean of context, one attention head from it over the
    context, residual MLP on [baseline, attended]; raw = baseline + residual."""

    def __init__(self, dim: int, d_model: int = 256, hidden: int = 512):
        super().__init__()
        self.scale = 1.0 / math.sqrt(d_model)
        self.context_encoder = nn.Linear(dim, d_model)
        self.query_encoder = nn.Linear(dim, d_model)
        self.residual_net = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.GELU(), nn.LayerNorm(hidden),
            nn.Linear(hidden, d_model), nn.GELU(), nn.LayerNorm(d_model), nn.Linear(d_model, dim))

    def forward(self, ctx):
        baseline = ctx.mean(dim=1)                                       # (B, D)
        keys = self.context_encoder(ctx)                                 # (B, T, d)
        query = self.query_encoder(baseline).unsqueeze(1)                # (B, 1, d)
        weights = torch.softmax((query @ keys.transpose(1, 2)) * self.scale, dim=-1)  # (B, 1, T)
        attended = (weights @ ctx).squeeze(1)                            # (B, D): values are the inputs
        raw = baseline + self.residual_net(torch.cat([baseline, attended], dim=-1))
        return raw, F.normalize(raw, dim=-1)


def build_model(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.kind == "transformer":
        return TransformerLVM(dim, cfg.d_model, cfg.nhead, cfg.num_layers, cfg.ff, cfg.dropout)
    if cfg.kind == "lstm":
        return LSTMLVM(dim, cfg.hidden, cfg.lstm_layers, cfg.lstm_dropout)
    if cfg.kind == "gru":
        return GRULVM(dim, cfg.d_model, cfg.num_layers)
    if cfg.kind == "amn":
        return AMNLVM(dim, cfg.amn_d, cfg.hidden)
    raise ValueError(f"model.kind: {cfg.kind!r} is not one of transformer, lstm, gru, amn")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
