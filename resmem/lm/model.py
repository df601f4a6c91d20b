"""Decoder-only transformers for next-token prediction (nanoGPT-style), their token batches, and the token
datastore: one key per training position, the final hidden state fed to the output layer.

The models train with the same `resmem.train.train` as the image models (checkpoints, resume, progress):
a `TokenWindows` loader yields (inputs, targets) of shape (batch, context) and the loss is taken over every
position. A position sees the tokens before it within its window of `context` tokens, in training and in the
datastore alike, so that keys are the states the model was trained on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02  # GPT-2's initialization of embeddings and linear weights
MLP_RATIO = 4  # hidden width of each block's MLP, in multiples of the model width


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention and MLP, each added to the residual stream."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_attn = nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.ln_mlp = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, MLP_RATIO * n_embd), nn.GELU(), nn.Linear(MLP_RATIO * n_embd, n_embd)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    """Token and position embeddings, `n_layer` blocks, a final LayerNorm and an output layer tied to the token
    embedding (no bias): logits = W h, with h = `hidden(tokens)` the datastore key."""

    def __init__(self, vocab_size: int, context: int, n_layer: int = 2, n_head: int = 4, n_embd: int = 64):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.context = context
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(context, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_final = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        self.head.weight = self.token_embedding.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # Residual projections are scaled down with depth so that the stream's variance stays put (GPT-2).
                scale = 1 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "mlp.2.weight")) else 1.0
                nn.init.normal_(p, std=INIT_STD * scale)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(tokens))

    def output_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b) of the output layer as float32 numpy arrays: logits = h @ W.T + b (b is zero: no bias)."""
        weight = self.head.weight.detach().float().cpu().numpy()
        return weight, np.zeros(len(weight), dtype=np.float32)


def build_lm(spec: dict, vocab_size: int, context: int) -> GPT:
    return GPT(vocab_size, context, spec["n_layer"], spec["n_head"], spec["n_embd"])


class TokenWindows:
    """Batches of windows of a 1-D token array: inputs tokens[s : s+context], targets shifted by one.

    Evaluation windows start at 0, context, 2·context, …; a training epoch (given a seed) shifts them all by a
    random offset below `context` and shuffles them, so that every position sees every context length."""

    memory_format = torch.contiguous_format  # what resmem.train expects of a loader

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, device: torch.device):
        self.tokens = tokens  # int32, possibly a memmap of billions of tokens: only batches are read and widened
        self.context, self.batch_size, self.device = context, batch_size, device

    def windows(self, offset: int = 0) -> int:
        return max(0, (len(self.tokens) - 1 - offset) // self.context)

    def __len__(self) -> int:
        return self.windows()

    def batch(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = starts.numpy()[:, None] + np.arange(self.context + 1)
        chunk = torch.from_numpy(self.tokens[rows].astype(np.int64)).to(self.device, non_blocking=True)
        return chunk[:, :-1], chunk[:, 1:]

    def epoch(self, seed: int | None = None, drop_single: bool = False):
        offset, generator = 0, None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
            offset = int(torch.randint(self.context, (1,), generator=generator))
        starts = offset + self.context * torch.arange(self.windows(offset))
        if generator is not None:
            starts = starts[torch.randperm(len(starts), generator=generator)]
        for i in range(0, len(starts), self.batch_size):
            yield self.batch(starts[i : i + self.batch_size])


def datastore_positions(n_tokens: int, context: int, stride: int = 1, budget: int | None = None) -> np.ndarray:
    """Sorted positions p whose next token p+1 the datastore (or a query split) holds: every `stride`-th
    position of the evaluation windows, thinned evenly to at most `budget` positions."""
    usable = max(0, (n_tokens - 1) // context) * context
    count = -(-usable // stride)  # positions 0, stride, 2·stride, … below usable
    if budget is None or count <= budget:
        return np.arange(0, usable, stride, dtype=np.int64)
    # Thinned without materializing all `count` positions (billions for a large corpus).
    return stride * np.unique(np.linspace(0, count - 1, budget).round().astype(np.int64))


@torch.inference_mode()
def hidden_states(
    model: GPT, tokens: np.ndarray, positions: np.ndarray, context: int, batch_size: int, device, amp: bool = False
):
    """Yield (keys float32, next tokens int64) numpy blocks for the sorted `positions`, in order: each
    position's final hidden state within its evaluation window and the token that follows it."""
    device = torch.device(device)
    model.to(device).eval()
    loader = TokenWindows(tokens, context, batch_size, device)
    windows = np.unique(positions // context)
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        lo, hi = np.searchsorted(positions, [batch[0] * context, (batch[-1] + 1) * context])
        wanted = positions[lo:hi]
        x, y = loader.batch(torch.from_numpy(batch * context))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            h = model.hidden(x)
        rows = torch.from_numpy(np.searchsorted(batch, wanted // context) * context + wanted % context)
        yield (
            h.flatten(0, 1)[rows.to(device)].float().cpu().numpy(),
            y.flatten()[rows.to(device)].cpu().numpy(),
        )
