"""DDPM++/NCSN++ (``SongUNet``) and ADM (``DhariwalUNet``) backbones with EDM's constructor arguments.

Both take ``(x, noise_labels, class_labels, augment_labels=None)`` and return the raw network output F; the
preconditioning (``precond.py``) wraps them. Module names (``map_noise``, ``map_label``, ``map_augment``,
``map_layer0/1``, ``enc['32x32_conv']``, ``enc['32x32_block0']``, ``dec['8x8_in0']``, ``dec['32x32_aux_conv']``,
``out_norm``, ``out_conv``) match EDM's so its checkpoints load strictly.

Both expose ``encode`` (mapping + encoder only; the last encoder feature map is the bottleneck used by the
shared-encoder discriminator) and ``use_checkpoint`` (activation checkpointing of every block whenever gradients are
recorded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock


class _UNetBase(nn.Module):
    """Shared machinery: block calls with optional checkpointing, label dropout, encoder loop."""

    use_checkpoint: bool = False

    def _call(self, block, *args):
        # Also in eval mode: a frozen teacher/fake score still carries activations when the generator's gradient
        # flows through its input. Non-reentrant checkpointing restores the RNG state, so dropout stays exact.
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _drop_labels(self, labels, batch, device):
        if self.training and self.label_dropout and labels is not None:
            keep = (torch.rand([batch, 1], device=device) >= self.label_dropout).to(labels.dtype)
            labels = labels * keep
        return labels

    def encode(self, x, noise_labels, class_labels, augment_labels=None):
        """Mapping network + encoder; returns the lowest-resolution feature map [B, C_bottleneck, h, w]."""
        emb = self._embed(x, noise_labels, class_labels, augment_labels)
        return self._encode(x, emb)[0]


class SongUNet(_UNetBase):
    """DDPM++ (positional embedding, standard encoder) / NCSN++ (fourier, residual encoder) U-Net.

    Args (EDM's names and defaults):
        img_resolution, in_channels, out_channels: image geometry.
        label_dim: number of classes (0 = unconditional). augment_dim: augmentation-label size (0 = none).
        model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions, dropout, label_dropout,
        embedding_type ("positional"|"fourier"), channel_mult_noise, encoder_type ("standard"|"skip"|"residual"),
        decoder_type ("standard"|"skip"), resample_filter.
    Shapes:
        x [B, in_channels, R, R], noise_labels [B], class_labels [B, label_dim] or None -> [B, out_channels, R, R].
    """

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10,
                 label_dropout=0.0, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard|skip|residual, got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard|skip, got {decoder_type!r}")
        self.label_dropout = label_dropout
        self.img_resolution = img_resolution
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        blk = {"emb_channels": emb_channels, "num_heads": 1, "dropout": dropout, "skip_scale": math.sqrt(0.5),
               "eps": 1e-6,
                   "resample_filter": resample_filter, "resample_proj": True, "adaptive_scale": False, "init": init,
                   "init_zero": init_zero, "init_attn": init_attn}

        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_channels)
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        self.enc = nn.ModuleDict()
        ch = in_channels
        aux_ch = in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(ch, model_channels, 3, **init)
                ch = model_channels
                skip_channels.append(ch)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(ch, ch, down=True, **blk)
                skip_channels.append(ch)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(aux_ch, aux_ch, 0, down=True,
                                                               resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_ch, ch, 1, **init)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(aux_ch, ch, 3, down=True,
                                                                   resample_filter=resample_filter,
                                                                   fused_resample=True, **init)
                    aux_ch = ch
            for idx in range(num_blocks):
                out = model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(ch, out, attention=res in attn_resolutions, **blk)
                ch = out
                skip_channels.append(ch)

        self.dec = nn.ModuleDict()
        self._takes_skip = set()
        top = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == top:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(ch, ch, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(ch, ch, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(ch, ch, up=True, **blk)
            for idx in range(num_blocks + 1):
                name = f"{res}x{res}_block{idx}"
                out = model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                self.dec[name] = UNetBlock(ch + skip_channels.pop(), out, attention=attn, **blk)
                self._takes_skip.add(name)
                ch = out
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < top:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(ch, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(ch, out_channels, 3, **init_zero)

    def _embed(self, x, noise_labels, class_labels, augment_labels):
        dtype = self.map_layer0.weight.dtype  # bare bf16 modules (no autocast) get bf16 inputs throughout
        emb = self.map_noise(noise_labels)
        emb = torch.cat([emb[:, emb.shape[1] // 2:], emb[:, : emb.shape[1] // 2]], dim=1).to(dtype)  # (sin, cos)
        if self.map_label is not None:
            labels = self._drop_labels(class_labels, x.shape[0], x.device)
            emb = emb + self.map_label((labels.float() * math.sqrt(self.map_label.in_features)).to(dtype))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(dtype))
        emb = F.silu(self.map_layer0(emb))
        return F.silu(self.map_layer1(emb))

    def _encode(self, x, emb):
        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = x + block(aux)
                skips[-1] = x
            elif "aux_residual" in name:
                x = aux = (x + block(aux)) / math.sqrt(2)
                skips[-1] = x
            elif isinstance(block, UNetBlock):
                x = self._call(block, x, emb)
                skips.append(x)
            else:
                x = block(x)
                skips.append(x)
        return x, skips

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self._embed(x, noise_labels, class_labels, augment_labels)
        x, skips = self._encode(x, emb)
        aux = None
        tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if name in self._takes_skip:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = self._call(block, x, emb)
        return aux


class DhariwalUNet(_UNetBase):
    """ADM U-Net (Dhariwal & Nichol) as configured in EDM.

    Args (EDM's names and defaults): img_resolution, in_channels, out_channels, label_dim, augment_dim,
        model_channels=192, channel_mult=(1,2,3,4), channel_mult_emb=4, num_blocks=3,
        attn_resolutions=(32,16,8), dropout=0.10, label_dropout=0.
    Shapes:
        x [B, in_channels, R, R], noise_labels [B], class_labels [B, label_dim] or None -> [B, out_channels, R, R].
    """

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3, attn_resolutions=(32, 16, 8),
                 dropout=0.10, label_dropout=0.0):
        super().__init__()
        self.label_dropout = label_dropout
        self.img_resolution = img_resolution
        emb_channels = model_channels * channel_mult_emb
        init = {"init_mode": "kaiming_uniform", "init_weight": math.sqrt(1 / 3), "init_bias": math.sqrt(1 / 3)}
        init_zero = {"init_mode": "kaiming_uniform", "init_weight": 0, "init_bias": 0}
        blk = {"emb_channels": emb_channels, "channels_per_head": 64, "dropout": dropout, "init": init,
               "init_zero": init_zero}

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        ch = in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(ch, model_channels * mult, 3, **init)
                ch = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(ch, ch, down=True, **blk)
            skip_channels.append(ch)
            for idx in range(num_blocks):
                out = model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(ch, out, attention=res in attn_resolutions, **blk)
                ch = out
                skip_channels.append(ch)

        self.dec = nn.ModuleDict()
        self._takes_skip = set()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(ch, ch, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(ch, ch, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(ch, ch, up=True, **blk)
            for idx in range(num_blocks + 1):
                name = f"{res}x{res}_block{idx}"
                out = model_channels * mult
                self.dec[name] = UNetBlock(ch + skip_channels.pop(), out, attention=res in attn_resolutions, **blk)
                self._takes_skip.add(name)
                ch = out
        self.out_norm = GroupNorm(ch)
        self.out_conv = Conv2d(ch, out_channels, 3, **init_zero)

    def _embed(self, x, noise_labels, class_labels, augment_labels):
        dtype = self.map_layer0.weight.dtype  # bare bf16 modules (no autocast) get bf16 inputs throughout
        emb = self.map_noise(noise_labels).to(dtype)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(dtype))
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = self._drop_labels(class_labels, x.shape[0], x.device)
            emb = emb + self.map_label(labels.to(dtype))
        return F.silu(emb)

    def _encode(self, x, emb):
        skips = []
        for block in self.enc.values():
            x = self._call(block, x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        return x, skips

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self._embed(x, noise_labels, class_labels, augment_labels)
        x, skips = self._encode(x, emb)
        for name, block in self.dec.items():
            if name in self._takes_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = self._call(block, x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
