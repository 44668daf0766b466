"""Synthetic replay: images a model "remembers", recovered from its BatchNorm statistics.

Fine-tuning has your faces, not the data the start was trained on, so distillation from the start
(``train.distill_start``) holds the start's outputs only on faces like yours: what it knew about
other faces drifts. A network with BatchNorm keeps, in each layer's running mean and variance, a
summary of what its training images looked like. :func:`synthesize` optimises random images until
the start's layers see those statistics and its expression head gives each image a chosen class
(model inversion, "DeepInversion": Yin et al., *Dreaming to Distill*, CVPR 2020). Distilling the
start on these images beside your faces (``train.replay_synthetic``) holds what it knew on inputs
that look like its own training data, which no data of yours needs to contain.

The images are made once (a few minutes on a CPU, seconds on a GPU) and kept in the run's folder
(``replay.safetensors``), so a resumed run reuses them, and in a cache (``$AFFECTFPN_CACHE``, by
default ``~/.cache/affectfpn``), so the next run from the same start with the same settings does
too.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from affectfpn.errors import ConfigError
from affectfpn.io import atomic_write
from affectfpn.models.hub import weights_digest

if TYPE_CHECKING:
    from affectfpn.models.affectfpn import AffectFPN

logger = logging.getLogger(__name__)

#: What the saved images depend on, stored in the file's metadata: a file made with other
#: values is made again rather than reused.
_KEYS = ("count", "iterations", "grey", "seed", "start")

#: Weights of the objective (chosen on lfw-expressions val, docs/training.md): the BatchNorm
#: statistics (the first layer's counted 5 times: it sees the pixels), total variation (smooth
#: images, not adversarial noise) and the class of each image.
BN_WEIGHT = 0.05
FIRST_BN_FACTOR = 5.0
TV_WEIGHT = 20.0
LEARNING_RATE = 0.1


def _norm_layers(model: nn.Module) -> list[nn.Module]:
    """The 2-d normalisation layers that keep running statistics (BatchNorm, frozen or not)."""
    return [
        m
        for m in model.modules()
        if isinstance(getattr(m, "running_mean", None), torch.Tensor)
        and isinstance(getattr(m, "running_var", None), torch.Tensor)
        and not isinstance(m, nn.BatchNorm1d)
    ]


def synthesize(
    model: AffectFPN,
    count: int,
    *,
    iterations: int = 300,
    grey: bool = True,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Images that ``model``'s BatchNorm statistics describe, as ``count x 3 x H x W`` uint8.

    Each image starts as smooth random noise and is optimised (Adam, cosine schedule, a random
    shift and flip each step) so that the batch's statistics at every BatchNorm layer match the
    layer's running ones, neighbouring pixels stay close, and, when the model reads expressions,
    the model gives it an expression drawn evenly from its classes. The model is not changed.

    Args:
        model: The model to invert; it must have BatchNorm layers with running statistics.
        count: How many images.
        iterations: Optimisation steps per batch of images.
        grey: Grey images (the channel repeated), as the shipped models were trained on; ``False``
            for a model trained on colour faces.
        seed: Seeds the noise, the classes and the shifts: the same seed gives the same images.
        batch_size: Images optimised together (the statistics are matched per batch).
        device: Where to run (default: where the model is).

    Raises:
        ConfigError: a bad count, a bad number of iterations, or a model without BatchNorm
            statistics to invert.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"synthetic replay: count must be a positive integer, got {count!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(
            f"synthetic replay: iterations must be a positive integer, got {iterations!r}"
        )
    layers = _norm_layers(model)
    if not layers:
        raise ConfigError(
            "synthetic replay needs a start with BatchNorm statistics to invert, and "
            f"{type(model).__name__} has none: set train.replay_synthetic = 0"
        )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    terms: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        running_mean = torch.as_tensor(module.running_mean).float()
        running_var = torch.as_tensor(module.running_var).float()
        terms.append(
            torch.linalg.vector_norm(mean - running_mean)
            + torch.linalg.vector_norm(var - running_var)
        )

    handles = [layer.register_forward_hook(hook) for layer in layers]
    config = model.config
    height, width = (int(v) for v in config.input_size)
    mean = torch.tensor(config.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=dev).view(1, 3, 1, 1)
    classes = len(config.expressions) if "expression" in config.tasks else 0
    shift = max(1, min(height, width) // 16)
    generator = torch.Generator().manual_seed(int(seed))
    out: list[torch.Tensor] = []
    started = time.perf_counter()
    logger.info(
        "synthetic replay: inverting %d images from the start's BatchNorm statistics (%d steps "
        "each batch; minutes on a CPU, made once and cached)",
        count,
        iterations,
    )
    try:
        for first in range(0, count, batch_size):
            n = min(batch_size, count - first)
            channels = 1 if grey else 3
            coarse = torch.randn(n, channels, 6, 6, generator=generator) * 0.3
            pixels = F.interpolate(coarse, size=(height, width), mode="bilinear")
            pixels = pixels.to(dev).requires_grad_(True)
            target = (
                torch.randint(0, classes, (n,), generator=generator).to(dev) if classes else None
            )
            optimizer = torch.optim.Adam([pixels], lr=LEARNING_RATE, betas=(0.5, 0.9))
            for step in range(iterations):
                lr = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / iterations))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                image = (pixels + 0.5).clamp(0, 1)
                offsets = torch.randint(-shift, shift + 1, (2,), generator=generator)
                dy, dx = int(offsets[0]), int(offsets[1])
                image = torch.roll(image, shifts=(dy, dx), dims=(2, 3))
                if bool(torch.rand((), generator=generator) < 0.5):
                    image = image.flip(3)
                x = (image.expand(-1, 3, -1, -1) - mean) / std
                terms.clear()
                output = model(x)
                loss = BN_WEIGHT * (FIRST_BN_FACTOR * terms[0] + sum(terms[1:]))
                loss = loss + TV_WEIGHT * _total_variation(image)
                if target is not None and output.expression is not None:
                    loss = loss + F.cross_entropy(output.expression.float(), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            image = (pixels.detach() + 0.5).clamp(0, 1).expand(-1, 3, -1, -1)
            out.append(image.mul(255).round().to(torch.uint8).cpu())
    finally:
        for handle in handles:
            handle.remove()
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
    logger.info(
        "synthetic replay: %d images inverted from the start's BatchNorm statistics in %.0f s",
        count,
        time.perf_counter() - started,
    )
    return torch.cat(out).contiguous()


def _total_variation(image: torch.Tensor) -> torch.Tensor:
    return (image[..., 1:, :] - image[..., :-1, :]).pow(2).mean() + (
        image[..., :, 1:] - image[..., :, :-1]
    ).pow(2).mean()


def cache_dir() -> Path:
    """Where replay images are cached: ``$AFFECTFPN_CACHE/replay`` (default
    ``$XDG_CACHE_HOME/affectfpn`` or ``~/.cache/affectfpn``)."""
    root = os.environ.get("AFFECTFPN_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "affectfpn")
    return Path(root) / "replay"


def _read(path: Path, meta: dict[str, str]) -> torch.Tensor | None:
    """The images at ``path`` when its metadata equals ``meta``; ``None`` otherwise."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = f.metadata() or {}
            if all(saved.get(k) == meta[k] for k in _KEYS):
                return f.get_tensor("images")
    except Exception as exc:  # a torn or foreign file is made again
        logger.warning("synthetic replay: %s is unreadable (%s); not used", path, exc)
        return None
    logger.info("synthetic replay: %s was made with other settings; not used", path)
    return None


def _write(path: Path, images: torch.Tensor, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    blob = save({"images": images}, metadata=meta)
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def load_or_synthesize(
    path: str | Path,
    model: AffectFPN,
    count: int,
    *,
    iterations: int = 300,
    grey: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The images at ``path`` when they were made with these settings from this start, else
    those of the cache (:func:`cache_dir`), else :func:`synthesize` them; they are saved at
    ``path`` (safetensors, the settings as metadata) and in the cache."""
    path = Path(path)
    meta = {
        "count": str(count),
        "iterations": str(iterations),
        "grey": str(bool(grey)).lower(),
        "seed": str(seed),
        "start": weights_digest(model),
    }
    images = _read(path, meta)
    if images is not None:
        return images
    cached = cache_dir() / (
        f"{meta['start']}-{count}x{iterations}-{'grey' if grey else 'colour'}-seed{seed}"
        ".safetensors"
    )
    images = _read(cached, meta)
    if images is None:
        images = synthesize(
            model, count, iterations=iterations, grey=grey, seed=seed, device=device
        )
        try:
            _write(cached, images, meta)
        except OSError as exc:  # a read-only home: the run's own copy is enough
            logger.info("synthetic replay: not cached at %s (%s)", cached, exc)
    else:
        logger.info("synthetic replay: %d images from the cache, %s", len(images), cached)
    _write(path, images, meta)
    return images
