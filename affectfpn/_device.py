"""Device and mixed-precision choices shared by inference, evaluation and training."""

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from affectfpn.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` into a ``torch.device``.

    ``"auto"`` (or ``None``) picks CUDA, then Apple's MPS, then the CPU. Asking for a device that
    is not available raises :class:`~affectfpn.errors.ConfigError` saying what is.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {device!r} is not understood; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ConfigError(f"device {device!r} asked for, but MPS is not available; use 'cpu'")
    return dev


#: The one vocabulary of mixed precision, for prediction, evaluation and training.
AMP_MODES: tuple[str, ...] = ("auto", "on", "off", "bf16", "fp16")


def amp_mode(value: object, *, name: str = "amp") -> str:
    """``value`` as one of :data:`AMP_MODES` (``True``/``False``/``None``, the older spelling
    of prediction, become ``"on"``/``"off"``/``"auto"``); anything else is a ConfigError."""
    from affectfpn.errors import ConfigError

    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in AMP_MODES:
        return value
    raise ConfigError(f"{name} {value!r} is not one of {', '.join(AMP_MODES)}")


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``device``, or ``None`` for float32: the one AMP policy.

    ``"auto"``: on CUDA only, bfloat16 where the GPU supports it, else float16. ``"on"``: the
    same on CUDA, and also bfloat16 on the CPU and float16 elsewhere (MPS). ``"off"``: none.
    ``"fp16"`` / ``"bf16"``: that dtype on any device.
    """
    mode = amp_mode(mode)
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` at ``dtype`` on ``device``; nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
