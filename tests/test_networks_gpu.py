"""GPU checks of the networks: bf16 autocast, channels_last, SDPA on CUDA, a CUDA teacher step."""

import pytest
import torch

from fastui import networks as N
from fastui.networks.layers import set_attention_backend

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_bf16_channels_last_sdpa_matches_fp32_math_attention():
    torch.manual_seed(0)
    net = N.build(N.small_unet_arch()).cuda().eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(8, 1, 32, 32, device="cuda")
    sigma = torch.full((8,), 1.0, device="cuda")
    labels = torch.arange(8, device="cuda")
    try:
        set_attention_backend("math")
        ref = net(x, sigma, labels)
        set_attention_backend("sdpa")
        fast = net.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = fast(x.contiguous(memory_format=torch.channels_last), sigma, labels)
    finally:
        set_attention_backend("sdpa")
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


@cuda
def test_cuda_tiny_teacher_training_steps(tmp_path):
    from fastui import teacher_train as T

    rc = T.main(["--config", "configs/teacher_fmnist.toml", "--device", "cuda", "--tiny", "--max-steps", "3",
                 "--out", str(tmp_path / "r"), "--no-progress", "--train.batch=16", "--log.grid_n=4",
                 "--log.grid_steps=2"])
    assert rc == 0 and (tmp_path / "r" / "teacher" / "weights.pt").is_file()
