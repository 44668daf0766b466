"""Device and mixed-precision choices shared by inference, evaluation and training."""

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a distributed run (``torchrun``): training and corpus jobs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """What ``torchrun`` says in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one process
        (rank 0 of 1) where they are not set. Joins no process group."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if world <= 1:
                return cls()
            rank = int(os.environ["RANK"])
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except (KeyError, ValueError):
            raise ConfigError(
                "WORLD_SIZE is set but RANK is missing or not an integer: start the processes "
                "with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK"
            ) from None
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
        return cls(rank=rank, world_size=world, local_rank=local_rank)
