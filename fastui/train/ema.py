"""EMA of the generator, on each rank's own view of the parameters (ZeRO-3 partitions stay partitioned).

For ZeRO stages 0-2 every rank holds full parameters and its EMA is the full EMA (identical on every rank). Under
ZeRO-3 a rank holds only its flat partition ``param.ds_tensor``; the EMA keeps the same partition, and
:meth:`Ema.full_state_dict` all-gathers it (a collective) for export and sample grids.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Ema"]


def _local(p: torch.Tensor) -> torch.Tensor:
    t = getattr(p, "ds_tensor", None)
    return t if t is not None else p.data


class Ema:
    """Exponential moving average in fp32 of a module's (local) parameters; buffers are copied at export."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shadow = [_local(p).detach().float().clone() for p in module.parameters()]

    @torch.no_grad()
    def update(self, beta: float) -> None:
        """``ema = beta ema + (1 - beta) param`` (no host sync; one fused multi-tensor lerp, not one per parameter)."""
        torch._foreach_lerp_(self.shadow, [_local(p).float() for p in self.module.parameters()], 1.0 - beta)

    def state_dict(self) -> dict:
        """This rank's shadow tensors (saved per rank)."""
        return {"shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """A plain state dict of the EMA network on the CPU (collective under ZeRO-3: call on every rank)."""
        out = {}
        for name, s, p in zip(self.names, self.shadow, self.module.parameters()):
            if getattr(p, "ds_tensor", None) is not None:
                world = dist.get_world_size()
                parts = [torch.empty_like(s) for _ in range(world)]
                dist.all_gather(parts, s.contiguous())
                full = torch.cat(parts)[: p.ds_numel].reshape(p.ds_shape)
            else:
                full = s
            out[name] = full.detach().cpu().clone()
        persistent = set(self.module.state_dict())
        for name, b in self.module.named_buffers():
            if name in persistent:
                out[name] = b.detach().cpu().clone()
        return out
