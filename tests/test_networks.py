"""fastui.networks: EDM parameter names/shapes/counts, preconditioning (MATH §1), attention, checkpointing."""

import math

import pytest
import torch

from fastui import networks as N
from fastui.networks.discriminator import ConvHead, Discriminator, bottleneck_channels
from fastui.networks.layers import set_attention_backend

# Facts about EDM's released checkpoints (names and shapes of EDM's training/networks.py modules at the
# published configurations; CIFAR-10 DDPM++: 128 channels x (2,2,2), emb 512, augment_dim 9; ImageNet-64 ADM:
# 192 channels x (1,2,3,4), emb 768, 1000 classes, 64 channels per attention head).
EDM_DDPMPP_KEYS = {
    "model.map_augment.weight": (128, 9),
    "model.map_layer0.weight": (512, 128),
    "model.map_layer0.bias": (512,),
    "model.map_layer1.weight": (512, 512),
    "model.enc.32x32_conv.weight": (128, 3, 3, 3),
    "model.enc.32x32_block0.norm0.weight": (128,),
    "model.enc.32x32_block0.conv0.weight": (256, 128, 3, 3),
    "model.enc.32x32_block0.affine.weight": (256, 512),
    "model.enc.32x32_block0.skip.weight": (256, 128, 1, 1),
    "model.enc.16x16_down.conv0.resample_filter": (1, 1, 2, 2),
    "model.enc.16x16_down.skip.weight": (256, 256, 1, 1),
    "model.enc.16x16_block0.qkv.weight": (768, 256, 1, 1),
    "model.enc.16x16_block0.proj.weight": (256, 256, 1, 1),
    "model.dec.8x8_in0.qkv.weight": (768, 256, 1, 1),
    "model.dec.8x8_block0.conv0.weight": (256, 512, 3, 3),
    "model.dec.16x16_up.conv0.resample_filter": (1, 1, 2, 2),
    "model.dec.32x32_aux_norm.weight": (256,),
    "model.dec.32x32_aux_conv.weight": (3, 256, 3, 3),
}
EDM_DDPMPP_ABSENT = ["model.map_label.weight", "model.enc.32x32_block0.qkv.weight", "model.dec.8x8_in1.qkv.weight"]
EDM_ADM_KEYS = {
    "model.map_label.weight": (768, 1000),
    "model.map_layer0.weight": (768, 192),
    "model.enc.64x64_conv.weight": (192, 3, 3, 3),
    "model.enc.32x32_down.skip.resample_filter": (1, 1, 2, 2),
    "model.enc.32x32_block0.affine.weight": (768, 768),
    "model.enc.32x32_block0.qkv.weight": (1152, 384, 1, 1),
    "model.dec.8x8_in0.norm2.weight": (768,),
    "model.out_norm.weight": (192,),
    "model.out_conv.weight": (3, 192, 3, 3),
}
EDM_ADM_ABSENT = ["model.map_label.bias", "model.enc.32x32_down.skip.weight", "model.enc.64x64_block0.qkv.weight"]


def _meta(arch):
    with torch.device("meta"):
        return N.build(arch)


@pytest.mark.parametrize("cond", [False, True])
def test_ddpmpp_cifar10_has_edm_names_shapes_and_56M_params(cond):
    net = _meta(N.ddpmpp_cifar10_arch(cond=cond))
    sd = net.state_dict()
    for key, shape in EDM_DDPMPP_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    absent = EDM_DDPMPP_ABSENT[1:] if cond else EDM_DDPMPP_ABSENT
    assert not set(absent) & set(sd)
    if cond:
        assert tuple(sd["model.map_label.weight"].shape) == (128, 10)
    n = N.count_parameters(net)
    assert abs(n - 56e6) / 56e6 < 0.01  # EDM paper: DDPM++ ~56M parameters


def test_adm_imagenet64_has_edm_names_shapes_and_296M_params():
    net = _meta(N.adm_imagenet64_arch())
    sd = net.state_dict()
    for key, shape in EDM_ADM_KEYS.items():
        assert tuple(sd[key].shape) == shape, key
    assert not set(EDM_ADM_ABSENT) & set(sd)
    n = N.count_parameters(net)
    assert abs(n - 296e6) / 296e6 < 0.005  # EDM paper: ADM ~296M parameters


def test_edm_named_state_dict_loads_strictly_and_mismatch_is_rejected():
    arch = N.tiny_arch(N.ddpmpp_cifar10_arch(cond=True))
    src = N.build(arch)
    # An EDM-style state dict: the "model." prefix and nothing else; every key present.
    sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    assert all(k.startswith("model.") for k in sd)
    dst = N.build(arch)
    dst.load_state_dict(sd, strict=True)
    assert torch.equal(dst.state_dict()["model.enc.32x32_conv.weight"], sd["model.enc.32x32_conv.weight"])
    sd["model.enc.32x32_conv.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError):
        dst.load_state_dict(sd, strict=True)


@pytest.mark.parametrize("sigma", [0.002, 0.1, 0.5, 2.5, 80.0])
def test_edm_coefficients_match_math_section1(sigma):
    sd = 0.5
    c_skip, c_out, c_in, c_noise = N.edm_coefficients(torch.tensor(sigma, dtype=torch.float64), sd)
    assert c_skip.item() == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert c_out.item() == pytest.approx(sigma * sd / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert c_in.item() == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert c_noise.item() == pytest.approx(math.log(sigma) / 4, rel=1e-12)


class _ConstantBackbone(torch.nn.Module):
    """Records its inputs and returns a fixed F, to check D = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.map_layer0 = torch.nn.Linear(1, 1)

    def forward(self, x_in, c_noise, labels, augment_labels=None):
        self.seen = (x_in, c_noise, labels)
        return self.f


def test_denoiser_applies_preconditioning_around_backbone():
    x = torch.randn(3, 1, 4, 4)
    f = torch.randn(3, 1, 4, 4)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    net = N.Denoiser(_ConstantBackbone(f), {}, 4, 1, label_dim=0, sigma_data=0.5)
    d = net(x, sigma)
    s = sigma.view(-1, 1, 1, 1)
    expected = 0.25 / (s**2 + 0.25) * x + s * 0.5 / (s**2 + 0.25).sqrt() * f
    torch.testing.assert_close(d, expected)
    x_in, c_noise, _ = net.model.seen
    torch.testing.assert_close(x_in, x / (s**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)


def test_vp_preconditioning_matches_vp_schedule():
    x = torch.randn(2, 1, 4, 4)
    f = torch.randn(2, 1, 4, 4)
    sigma = torch.tensor([0.05, 3.0])
    net = N.Denoiser(_ConstantBackbone(f), {}, 4, 1, precond="vp")
    d = net(x, sigma)
    torch.testing.assert_close(d, x - sigma.view(-1, 1, 1, 1) * f)
    _, c_noise, _ = net.model.seen
    t = c_noise.double() / 999
    # sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) must give back sigma
    back = torch.sqrt(torch.exp(0.5 * 19.9 * t**2 + 0.1 * t) - 1)
    torch.testing.assert_close(back, sigma.double(), rtol=1e-5, atol=0)
    assert net.sigma_min == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5) - 1))
    assert net.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))


@pytest.mark.parametrize("model", ["SongUNet", "DhariwalUNet"])
def test_forward_and_encode_shapes_conditional_and_unconditional(model):
    base = N.small_unet_arch() if model == "SongUNet" else N.adm_imagenet64_arch()
    for label_dim in (0, 10):
        arch = N.tiny_arch(base)
        arch["label_dim"] = label_dim
        res, ch = arch["img_resolution"], arch["img_channels"]
        net = N.build(arch).eval()
        x = torch.randn(2, ch, res, res)
        labels = torch.tensor([3, 7]) if label_dim else None
        out = net(x, torch.tensor([0.5, 5.0]), labels)
        assert out.shape == x.shape and out.dtype == torch.float32
        feats = net.encode(x, 0.5, labels)
        assert feats.shape == (2, bottleneck_channels(net), res // 2, res // 2)


def test_integer_and_one_hot_labels_give_the_same_output_and_labels_matter():
    net = N.build(N.tiny_arch(N.small_unet_arch())).eval()
    for p in net.parameters():  # EDM zero-ish init of the output convs would hide label effects
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 1, 32, 32)
    a = net(x, 1.0, torch.tensor([1, 4]))
    b = net(x, 1.0, torch.nn.functional.one_hot(torch.tensor([1, 4]), 10).float())
    c = net(x, 1.0, torch.tensor([2, 4]))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0], c[0]) and torch.allclose(a[1], c[1])


def test_sdpa_attention_matches_plain_softmax_attention():
    torch.manual_seed(0)
    net = N.build(N.tiny_arch(N.small_unet_arch())).eval()
    assert any("qkv" in k for k in net.state_dict())
    for name, p in net.named_parameters():
        if "proj" in name:  # zero-initialised: make attention contribute
            torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 1, 32, 32)
    try:
        set_attention_backend("math")
        ref = net(x, 1.0, torch.tensor([1, 2]))
        set_attention_backend("sdpa")
        out = net(x, 1.0, torch.tensor([1, 2]))
    finally:
        set_attention_backend("sdpa")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError):
        set_attention_backend("flash9000")


def test_activation_checkpointing_gives_identical_gradients():
    torch.manual_seed(1)
    net = N.build(N.tiny_arch(N.small_unet_arch())).train()
    x = torch.randn(2, 1, 32, 32)
    sigma = torch.tensor([0.3, 2.0])
    grads = []
    for enabled in (False, True):
        net.set_checkpointing(enabled)
        net.zero_grad()
        net(x, sigma, torch.tensor([0, 9])).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


def test_checkpointing_in_eval_mode_keeps_input_gradients_of_a_frozen_net():
    # The generator step differentiates through a frozen (eval) teacher's input: checkpointing must apply there.
    torch.manual_seed(3)
    net = N.build(N.tiny_arch(N.small_unet_arch())).eval().requires_grad_(False)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    grads = []
    for enabled in (False, True):
        net.set_checkpointing(enabled)
        x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
        out = net(x, torch.tensor([0.3, 2.0]), torch.tensor([0, 9]))
        assert out.grad_fn is not None
        out.square().sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("base", ["small", "adm", "ddpmpp"])
def test_bare_bf16_module_runs_without_autocast(base):
    arch = {"small": N.small_unet_arch, "adm": N.adm_imagenet64_arch, "ddpmpp": lambda: N.ddpmpp_cifar10_arch(True)}
    arch = N.tiny_arch(arch[base]())
    net = N.build(arch).to(torch.bfloat16).eval()
    r, c = arch["img_resolution"], arch["img_channels"]
    out = net(torch.randn(2, c, r, r), torch.ones(2), torch.tensor([1, 2]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bf16_autocast_and_channels_last_run_and_stay_close():
    torch.manual_seed(2)
    net = N.build(N.tiny_arch(N.small_unet_arch())).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 1, 32, 32)
    ref = net(x, 1.0, torch.tensor([0, 1]))
    cl = net.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), 1.0,
                                                   torch.tensor([0, 1]))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, 1.0, torch.tensor([0, 1]))
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_discriminator_shared_encoder_and_conv_head_give_patch_logits():
    net = N.build(N.tiny_arch(N.small_unet_arch())).eval()
    x = torch.randn(3, 1, 32, 32)
    shared = Discriminator(net)(x, torch.ones(3))
    feats = net.encode(x, torch.ones(3))
    torch.testing.assert_close(shared, feats.mean(dim=1).flatten(1))
    head = Discriminator(net, ConvHead(bottleneck_channels(net), hidden=8))(x, torch.ones(3))
    assert head.shape == (3, 16 * 16)


def test_build_rejects_unknown_model_and_keys():
    with pytest.raises(ValueError, match="unknown model"):
        N.build({"model": "Transformer", "img_resolution": 8, "img_channels": 1})
    with pytest.raises(ValueError, match="unknown arch keys"):
        N.build(dict(N.small_unet_arch(), colour="red"))


@pytest.mark.parametrize("up, down, kernel", [(True, False, 0), (True, False, 3), (False, True, 0), (False, True, 3)])
def test_box_resampling_shortcut_equals_the_filter_convolution(up, down, kernel):
    """The [1, 1] filter's pooling/upsampling shortcut computes exactly the depthwise filter convolution."""
    from fastui.networks.layers import Conv2d

    torch.manual_seed(0)
    m = Conv2d(8, 8, kernel, up=up, down=down, resample_filter=[1, 1]).double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    assert m.box2
    fast = m(x)
    m.box2 = False
    torch.testing.assert_close(fast, m(x), rtol=0, atol=1e-12)
