"""Building blocks of the EDM-family U-Nets (DDPM++ / ADM), with EDM's parameter names.

Parameter and buffer names follow the EDM checkpoints (``weight``, ``bias``, ``resample_filter``, ``norm0``,
``conv0``, ``affine``, ``norm1``, ``conv1``, ``skip``, ``norm2``, ``qkv``, ``proj``) so that a converted EDM state
dict loads with ``strict=True``. The implementation is independent: resampling is a depthwise (transposed)
convolution with a normalised separable filter, attention runs through ``F.scaled_dot_product_attention``
(optionally xformers), and every block can be activation-checkpointed by its parent.

Attention backends: ``"sdpa"`` (default), ``"xformers"`` (if importable), ``"math"`` (plain softmax reference,
fp32). Select globally with ``set_attention_backend`` or the environment variable ``FASTUI_ATTENTION``.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "xformers", "math")
_attention_backend = os.environ.get("FASTUI_ATTENTION", "sdpa")


def set_attention_backend(name: str) -> None:
    """Choose the attention implementation used by every ``UNetBlock``.

    Args:
        name: "sdpa" (torch scaled_dot_product_attention), "xformers" (memory_efficient_attention; raises if
            xformers is not importable) or "math" (explicit fp32 softmax, the reference).
    """
    global _attention_backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(ATTENTION_BACKENDS)}")
    if name == "xformers":
        _import_xformers()
    _attention_backend = name


def get_attention_backend() -> str:
    """The attention backend currently in use (see ``set_attention_backend``)."""
    return _attention_backend


def _import_xformers():
    try:
        import xformers.ops as xops  # optional dependency
    except ImportError as err:  # explicit choice must fail loudly
        raise RuntimeError(f"attention backend 'xformers' requested but xformers is not importable: {err}") from err
    return xops


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Softmax attention softmax(q k^T / sqrt(c)) v over the token axis.

    Args:
        q, k, v: [B, heads, L, c] tensors of one dtype.
        backend: override of the global backend.
    Returns:
        [B, heads, L, c] in the input dtype.
    """
    backend = backend or _attention_backend
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "xformers":
        xops = _import_xformers()
        # xformers wants [B, L, heads, c]
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "math":
        scale = 1.0 / math.sqrt(q.shape[-1])
        w = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * scale, dim=-1)
        return (w @ v.float()).to(q.dtype)
    raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(ATTENTION_BACKENDS)}")


def initial_values(shape, mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    """Random initial values with the named scheme (EDM's init modes).

    Args:
        shape: tensor shape.
        mode: "xavier_uniform", "xavier_normal", "kaiming_uniform" or "kaiming_normal".
        fan_in, fan_out: fans of the layer.
    Returns:
        A float32 tensor on the current default device (``meta`` works).
    """
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "xavier_normal":
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == "kaiming_uniform":
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"invalid init mode {mode!r}")


class Linear(nn.Module):
    """Fully connected layer ``y = x W^T + b`` with EDM's initialisation options.

    Shapes: x [..., in_features] -> [..., out_features].
    """

    def __init__(self, in_features, out_features, bias=True, init_mode="kaiming_normal", init_weight=1.0,
                 init_bias=0.0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = {"mode": init_mode, "fan_in": in_features, "fan_out": out_features}
        self.weight = nn.Parameter(initial_values([out_features, in_features], **fans) * init_weight)
        self.bias = nn.Parameter(initial_values([out_features], **fans) * init_bias) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def _resample_kernel(taps) -> torch.Tensor:
    """Separable 2-D low-pass kernel [1, 1, n, n] from 1-D taps, normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return torch.outer(f, f)[None, None] / f.sum().square()


class Conv2d(nn.Module):
    """Convolution with optional 2x up/down-sampling by a fixed separable filter.

    ``kernel=0`` gives a pure resampler (no weight). Upsampling is a depthwise transposed convolution with
    4x the filter (it preserves the mean); downsampling a depthwise stride-2 convolution. ``fused_resample``
    (NCSN++ residual path) convolves first and then downsamples with the filter's padding folded in.

    Shapes: x [B, in_channels, H, W] -> [B, out_channels, H', W'] with H' = 2H (up), H/2 (down) or H.
    """

    def __init__(self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_mode="kaiming_normal", init_weight=1.0, init_bias=0.0):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fans = {"mode": init_mode, "fan_in": in_channels * kernel * kernel, "fan_out": out_channels * kernel * kernel}
        self.weight = (nn.Parameter(initial_values([out_channels, in_channels, kernel, kernel], **fans)
                                    * init_weight) if kernel else None)
        self.bias = (nn.Parameter(initial_values([out_channels], **fans) * init_bias)
                     if kernel and bias else None)
        # Persistent buffer: EDM checkpoints carry it, so strict loading expects it.
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if (up or down) else None)
        self.box2 = list(resample_filter) == [1, 1]

    def forward(self, x):
        w, b, f = self.weight, self.bias, self.resample_filter
        w_pad = w.shape[-1] // 2 if w is not None else 0
        if f is not None:
            f = f.to(x.dtype)
            f_pad = (f.shape[-1] - 1) // 2
        if self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.expand(self.out_channels, 1, -1, -1), groups=self.out_channels, stride=2)
        elif self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).expand(self.in_channels, 1, -1, -1), groups=self.in_channels,
                                   stride=2, padding=w_pad + f_pad)
            x = F.conv2d(x, w)
        else:
            # The [1, 1] filter (DDPM++, ADM) is exactly nearest 2x upsampling / 2x2 average pooling; those ops
            # avoid the slow depthwise convolution with a stride-0 (expanded) weight on the CPU.
            if self.up:
                x = (F.interpolate(x, scale_factor=2.0, mode="nearest") if self.box2 else
                     F.conv_transpose2d(x, (f * 4).expand(self.in_channels, 1, -1, -1), groups=self.in_channels,
                                        stride=2, padding=f_pad))
            if self.down:
                x = (F.avg_pool2d(x, 2) if self.box2 else
                     F.conv2d(x, f.expand(self.in_channels, 1, -1, -1), groups=self.in_channels, stride=2,
                              padding=f_pad))
            if w is not None:
                # the bias inside the convolution: one kernel (and no separate reduction in the backward), not two
                x, b = F.conv2d(x, w, b, padding=w_pad), None
        if b is not None:
            x = x + b.view(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups (EDM's rule).

    Shapes: [B, C, H, W] -> same.
    """

    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(x f_j), sin(x f_j)] with f_j = max_positions^(-j / (n/2 - endpoint)).

    Shapes: x [B] -> [B, num_channels] (float32).
    """

    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x):
        half = self.num_channels // 2
        j = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1.0 / self.max_positions) ** j
        arg = x.float()[:, None] * freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x f), sin(2 pi x f)] (NCSN++); ``freqs`` is a buffer.

    Shapes: x [B] -> [B, num_channels] (float32).
    """

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        arg = x.float()[:, None] * (2 * math.pi * self.freqs.float())[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block with noise-embedding modulation, optional 2x resampling and optional self-attention.

    The union of the DDPM++ and ADM blocks: ``adaptive_scale`` selects scale/shift modulation (ADM) instead
    of an additive bias (DDPM++); ``skip_scale`` rescales each residual sum (1/sqrt(2) in DDPM++).

    Shapes: x [B, in_channels, H, W], emb [B, emb_channels] -> [B, out_channels, H', W'].
    """

    def __init__(self, in_channels, out_channels, emb_channels, up=False, down=False, attention=False,
                 num_heads=None, channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5,
                 resample_filter=(1, 1), resample_proj=False, adaptive_scale=True, init=None, init_zero=None,
                 init_attn=None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero if init_zero is not None else {"init_weight": 0})
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if attention:
            # EDM's rule: fewer channels than one head means no attention (and no qkv/proj parameters).
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        else:
            self.num_heads = 0
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter, **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            # A 1x1 projection when channels change (or when asked); otherwise a weightless resampler.
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter,
                               **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1, **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, 1, **init_zero)

    def forward(self, x, emb):
        residual = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb).to(x.dtype)[:, :, None, None]
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(residual) if self.skip is not None else residual)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attend(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attend(self, h):
        b, c, height, width = h.shape
        heads = self.num_heads
        # EDM's qkv channel layout: [heads, c/heads, (q,k,v)]; tokens are the pixels.
        qkv = self.qkv(h).reshape(b, heads, c // heads, 3, height * width)
        q, k, v = (qkv[:, :, :, i].transpose(-1, -2) for i in range(3))  # [B, heads, L, c/heads]
        out = attention(q.contiguous(), k.contiguous(), v.contiguous())
        return out.transpose(-1, -2).reshape(b, c, height, width)
