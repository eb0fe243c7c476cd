"""Feature extractors for FID/KID: the standard Inception (a TorchScript file) or any callable.

A *feature net* is any callable ``uint8 [N, 3, H, W] -> float [N, D]``. The standard one for FID is
NVIDIA's ``inception-2015-12-05.pt`` (published with StyleGAN2-ADA's metrics): a TorchScript module
that resizes internally to 299² and, called with ``return_features=True``, returns the 2048-d pool
features. Numbers are only comparable with published FIDs when that exact file is used.

Loading it uses ``torch.jit.load``, which runs TorchScript code from the file (TorchScript only, not
arbitrary Python); that is the de-facto standard for this network, so only load files you trust.
Weights are never fetched implicitly: the user names a local path or a URL (downloaded once into
``~/.cache/spherehead``, atomically, with a timeout).
"""
from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Callable, Optional

import numpy as np
import torch

INCEPTION_FILE = "inception-2015-12-05.pt"
DEFAULT_CACHE = os.path.join("~", ".cache", "spherehead")

FeatureNet = Callable[[torch.Tensor], torch.Tensor]


class MetricError(ValueError):
    """A metric cannot run because of user input (missing file, bad name, too few images)."""


def cache_dir(path: Optional[str] = None) -> str:
    return os.path.expanduser(path or DEFAULT_CACHE)


def _where_hint(cache: str) -> str:
    return (f"download {INCEPTION_FILE} (the StyleGAN2-ADA metrics Inception) and pass --inception PATH, "
            f"or put it at {os.path.join(cache, INCEPTION_FILE)}")


def download(url: str, cache: str, timeout: float = 60.0) -> str:
    """Fetch ``url`` into ``cache`` once (temp file + rename, so a broken download never looks cached)."""
    name = os.path.basename(urllib.parse.urlparse(url).path) or INCEPTION_FILE
    dest = os.path.join(cache, name)
    if os.path.isfile(dest):
        return dest
    try:
        os.makedirs(cache, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=cache)
    except OSError as e:
        raise MetricError(f"cannot write the download cache {cache}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as r:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise MetricError(f"cannot download {url} ({reason}); {_where_hint(cache)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve_inception(spec: Optional[str], cache: Optional[str] = None, timeout: float = 60.0) -> str:
    """Local path of the Inception file: ``spec`` is a path, a URL, or None (look in the cache)."""
    cache = cache_dir(cache)
    if spec and "://" in spec:
        return download(spec, cache, timeout)
    path = os.path.expanduser(spec) if spec else os.path.join(cache, INCEPTION_FILE)
    if os.path.isfile(path):
        return path
    raise MetricError(f"Inception network not found at {path}; {_where_hint(cache)}")


class TorchScriptFeatures:
    """The TorchScript Inception as a feature net: uint8 [N, 3, H, W] -> float32 [N, 2048] on the CPU."""

    name = "inception"   # what results record as "features"

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.device = module, device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.to(self.device), return_features=True).float().cpu()


def load_inception(spec: Optional[str], device="cpu", cache: Optional[str] = None,
                   timeout: float = 60.0) -> TorchScriptFeatures:
    """Load the standard Inception from a path/URL/cache (see the module docstring on trust)."""
    path = resolve_inception(spec, cache, timeout)
    try:
        with warnings.catch_warnings():   # torch.jit.load is deprecated, but this file exists only as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(path, map_location=device).eval()
    except Exception as e:  # a corrupt or wrong file: say which, never a traceback from deep in the JIT
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MetricError(f"{path}: cannot be loaded as the TorchScript Inception ({first})") from None
    return TorchScriptFeatures(module, torch.device(device))


def extract(feature_net: FeatureNet, images: torch.Tensor) -> np.ndarray:
    """Features float64 [N, D] of uint8 images [N, 3, H, W] (checked: a wrong output fails loudly)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"feature nets take uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}")
    with torch.no_grad():
        feats = feature_net(images)
    feats = torch.as_tensor(feats).detach().cpu().to(torch.float64)
    if feats.ndim != 2 or feats.shape[0] != images.shape[0]:
        raise ValueError(f"feature net returned {list(feats.shape)}, expected [{images.shape[0]}, D]")
    return feats.numpy()
