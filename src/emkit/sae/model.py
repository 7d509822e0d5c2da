"""The top-k sparse autoencoder (Gao et al., 2024) with a sparse backward pass for CPUs.

``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))``, ``x_hat = W_dec^T z + b_dec`` with unit-norm decoder
rows. Parameters are named as in EleutherAI's sparsify (``encoder.weight``, ``encoder.bias``,
``W_dec``, ``b_dec``) so the saved folder is readable by tools that read that layout.

Speed: the encoder's forward is one dense matmul, but only k entries per token survive the top-k,
so its backward is computed from those entries alone (sparse-times-dense products over the selected
rows instead of dense matmuls); the decoder is a weighted sum of k rows (``embedding_bag``) whose
backward is a sampled dot product and a sparse product. See
``benchmarks/sae.py`` for measured numbers.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emkit.errors import EmkitError
from emkit.sae.config import SaeConfig
from emkit.sae.io import TENSORS, read_sae, save_sae


def _rows_mm(idx: Tensor, vals: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """``S @ dense`` where ``S [n_rows, N]`` holds ``vals[n, j]`` at ``(idx[n, j], n)`` (duplicates add up)."""
    n, k = idx.shape
    cols = torch.arange(n, device=idx.device).repeat_interleave(k)
    s = torch.sparse_coo_tensor(torch.stack([idx.reshape(-1), cols]), vals.reshape(-1), (n_rows, n),
                                check_invariants=False)
    return torch.sparse.mm(s, dense)


def _sampled_dots(idx: Tensor, a: Tensor, rows: Tensor) -> Tensor:
    """``out[n, j] = a[n] . rows[idx[n, j]]`` without materialising ``rows[idx]`` (indices unique per row)."""
    n, k = idx.shape
    if k == 0:
        return a.new_zeros(n, 0)
    sorted_idx, perm = idx.sort(dim=1)
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, sorted_idx.reshape(-1), a.new_zeros(n * k), (n, rows.shape[0]),
                                          check_invariants=False)
    out = torch.sparse.sampled_addmm(pattern, a, rows.T, beta=0.0).values().reshape(n, k)
    return torch.empty_like(out).scatter_(1, perm, out)


class _TopKEncode(torch.autograd.Function):
    """Top-k encoder (plus optional AuxK top-k over dead latents) with a backward over the kept entries."""

    @staticmethod
    def forward(ctx, x, b_dec, weight, bias, k: int, dead: Tensor | None, k_aux: int,  # type: ignore[override]
                select_dtype: torch.dtype | None):
        xc = x - b_dec
        low = select_dtype is not None and select_dtype != weight.dtype
        # ReLU commutes with top-k, so it is applied to the k kept values only.
        if low:  # choose the k latents in low precision, then compute their values exactly
            pre = F.linear(xc.to(select_dtype), weight.to(select_dtype), bias.to(select_dtype))
        else:
            pre = F.linear(xc, weight, bias)
        idx = pre.topk(k, dim=-1, sorted=False).indices
        if dead is not None and k_aux > 0:
            aux_idx = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1, sorted=False).indices
        else:
            aux_idx = torch.zeros(x.shape[0], 0, dtype=torch.long, device=x.device)

        def values(i: Tensor) -> Tensor:
            v = _sampled_dots(i, xc, weight) + bias[i] if low else pre.gather(1, i)
            return v.clamp_min(0.0)

        vals, aux_vals = values(idx), values(aux_idx)
        ctx.save_for_backward(x, b_dec, weight, idx, aux_idx, vals > 0, aux_vals > 0)
        ctx.mark_non_differentiable(idx, aux_idx)
        return vals, idx, aux_vals, aux_idx

    @staticmethod
    def backward(ctx, g_vals, _g_idx, g_aux, _g_aux_idx):  # type: ignore[override]
        x, b_dec, weight, idx, aux_idx, live, aux_live = ctx.saved_tensors
        g = (g_vals if g_vals is not None else torch.zeros_like(live, dtype=weight.dtype)) * live  # ReLU
        if g_aux is not None and aux_idx.shape[1]:
            g = torch.cat([g, g_aux * aux_live], dim=1)
            idx = torch.cat([idx, aux_idx], dim=1)
        g = g.to(weight.dtype)
        g_bias = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
        g_bias.index_add_(0, idx.reshape(-1), g.reshape(-1))
        g_weight = g_x = g_bdec = None
        if ctx.needs_input_grad[2]:
            g_weight = _rows_mm(idx, g, x - b_dec, weight.shape[0])
        if ctx.needs_input_grad[1]:
            g_bdec = -(g_bias @ weight)  # sum over tokens of -W_enc^T g, grouped by latent
        if ctx.needs_input_grad[0]:
            g_x = F.embedding_bag(idx, weight, per_sample_weights=g, mode="sum")
        return g_x, g_bdec, g_weight, g_bias if ctx.needs_input_grad[3] else None, None, None, None, None


class _SparseDecode(torch.autograd.Function):
    """``y[n] = sum_j vals[n, j] W[idx[n, j]]`` with a backward that touches only the selected rows."""

    @staticmethod
    def forward(ctx, idx, vals, weight):  # type: ignore[override]
        ctx.save_for_backward(idx, vals, weight)
        return F.embedding_bag(idx, weight, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx, g_out):  # type: ignore[override]
        idx, vals, weight = ctx.saved_tensors
        g_vals = _sampled_dots(idx, g_out, weight) if ctx.needs_input_grad[1] else None
        g_weight = _rows_mm(idx, vals, g_out, weight.shape[0]) if ctx.needs_input_grad[2] else None
        return None, g_vals, g_weight


class TopKSAE(nn.Module):
    """A top-k sparse autoencoder over ``d_in``-wide activations."""

    def __init__(self, cfg: SaeConfig, *, seed: int | None = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        w = torch.randn(cfg.num_latents, cfg.d_in, generator=gen, dtype=dtype)
        w = w / w.norm(dim=1, keepdim=True)
        self.encoder = nn.Linear(cfg.d_in, cfg.num_latents, dtype=dtype)
        with torch.no_grad():
            self.encoder.weight.copy_(w)  # tied initialisation (encoder = decoder transpose)
            self.encoder.bias.zero_()
        self.W_dec = nn.Parameter(w.clone())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def num_latents(self) -> int:
        return self.cfg.num_latents

    @property
    def k(self) -> int:
        return self.cfg.k

    def _check(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.d_in:
            raise EmkitError(f"SAE expects {self.d_in}-wide activations, got {x.shape[-1]}",
                             hint="was this SAE trained on another model or layer?")
        return x.to(self.W_dec.dtype)

    def pre_acts(self, x: Tensor) -> Tensor:
        """All latents' activations before the top-k: ``ReLU(W_enc (x - b_dec) + b_enc)``."""
        return F.relu(self.encoder(self._check(x) - self.b_dec))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(indices, values)`` of the k active latents per row of ``x [..., d_in]``."""
        shape = x.shape[:-1]
        x2 = self._check(x).reshape(-1, self.d_in)
        vals, idx, _, _ = _TopKEncode.apply(x2, self.b_dec, self.encoder.weight, self.encoder.bias, self.k, None, 0,
                                            None)
        return idx.reshape(*shape, self.k), vals.reshape(*shape, self.k)

    def encode_with_aux(self, x: Tensor, dead: Tensor | None, k_aux: int, select_dtype: torch.dtype | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For training: ``(indices, values, aux_indices, aux_values)``; aux = top ``k_aux`` dead latents.

        ``select_dtype=torch.bfloat16`` picks the top k from a bfloat16 encoder product (about twice as
        fast on CPUs with bf16 units); the kept values and all gradients are still computed in fp32.
        """
        vals, idx, aux_vals, aux_idx = _TopKEncode.apply(self._check(x), self.b_dec, self.encoder.weight,
                                                         self.encoder.bias, self.k, dead, k_aux, select_dtype)
        return idx, vals, aux_idx, aux_vals

    def decode(self, indices: Tensor, values: Tensor, *, bias: bool = True) -> Tensor:
        """Reconstruction from sparse codes: ``sum_j values_j W_dec[indices_j] (+ b_dec)``."""
        shape = indices.shape[:-1]
        idx = indices.reshape(-1, indices.shape[-1]).long()
        vals = values.reshape(idx.shape).to(self.W_dec.dtype)
        y = _SparseDecode.apply(idx, vals, self.W_dec)
        if bias:
            y = y + self.b_dec
        return y.reshape(*shape, self.d_in)

    def dense(self, x: Tensor) -> Tensor:
        """Latent activations as a dense ``[..., num_latents]`` tensor (zeros outside the top k)."""
        idx, vals = self.encode(x)
        return torch.zeros(*idx.shape[:-1], self.num_latents, dtype=vals.dtype, device=vals.device).scatter_(
            -1, idx, vals)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruct ``x``."""
        return self.decode(*self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of each decoder row's gradient that would change its norm."""
        if self.W_dec.grad is not None:
            dot = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad.sub_(dot * self.W_dec)

    def save(self, folder: str | Path) -> Path:
        """Write the SAE folder (``cfg.json`` + ``sae.safetensors``); see :mod:`emkit.sae.io`."""
        return save_sae(self, folder)

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", hook: str | None = None) -> TopKSAE:
        """Load an SAE folder (emkit's or sparsify's top-k layout), checking every tensor's shape."""
        path, cfg, tensors = read_sae(folder, hook)
        sae = cls(cfg, seed=None, dtype=tensors["W_dec"].dtype)
        want = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        for k in TENSORS:
            if tuple(tensors[k].shape) != want[k]:
                raise EmkitError(f"{path}: {k} has shape {tuple(tensors[k].shape)}, cfg.json implies {want[k]}")
        sae.load_state_dict({k: tensors[k] for k in TENSORS}, strict=True)
        return sae.to(device).eval()

    def replace_cfg(self, **changes: Any) -> None:
        self.cfg = dataclasses.replace(self.cfg, **changes)


def load_sae(folder: str | Path, device: str | torch.device = "cpu", hook: str | None = None) -> TopKSAE:
    """Load an SAE folder (emkit's or sparsify's top-k layout)."""
    return TopKSAE.load(folder, device, hook)


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: ``sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over the batch."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 50, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to the rows of ``x``."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * m.norm().clamp_min(1.0):
            return new
        m = new
    return m
