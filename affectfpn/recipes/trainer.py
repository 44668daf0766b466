"""The training loop: plain PyTorch, one or many processes, CPU or CUDA.

* Each epoch draws a fresh random fraction of the training set (the paper's 25 %), split across
  distributed ranks without overlap.
* Randomness is derived from ``(seed, epoch)``, so an epoch replays identically; together with a
  checkpoint written atomically at the end of every epoch, a run killed at any moment and resumed
  ends with the same weights as a run never interrupted (on the CPU; CUDA kernels may differ in
  the last bits unless ``deterministic`` is set).
* On CUDA: mixed precision (bf16, or fp16 with a gradient scaler), channels_last, pinned memory.
* Only rank 0 writes files: ``last.pt`` (resumable checkpoint, read back with
  ``torch.load(weights_only=True)``), ``best/`` (a Hub-ready folder of the best epoch by the
  validation score), ``metrics.jsonl`` and ``metrics.csv`` (one row per finished epoch, rewritten
  from the checkpoint's history so that an interrupted epoch never leaves a duplicate row) and,
  once every epoch is done, ``done.json``.
"""

import contextlib
import csv
import dataclasses
import datetime
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from affectfpn._device import DistInfo, amp_dtype, amp_mode, autocast, resolve_device
from affectfpn.config import stored_temperature
from affectfpn.errors import AffectFPNError, ConfigError, InputError
from affectfpn.io import atomic_open, atomic_write
from affectfpn.labels import ACTION_UNITS, TASKS
from affectfpn.metrics import MultiTaskMeter
from affectfpn.models.affectfpn import AffectFPN, AffectFPNOutput
from affectfpn.preprocess import normalize
from affectfpn.recipes.augment import BatchAugment
from affectfpn.recipes.losses import distill_loss, multitask_loss

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1
#: Marker written by :meth:`Trainer.fit` once every epoch of a run is done.
DONE_NAME = "done.json"
#: Settings whose change between a checkpoint and a resumed run alters the training trajectory.


#: ``Trainer.best_epoch`` when the starting weights (epoch 0) validate best so far.
START_EPOCH = -2

#: The learning-rate schedules of :class:`TrainSettings`.
SCHEDULES = ("cosine", "cosine_restarts", "constant", "step")


_S = TypeVar("_S")


def settings_from_dict(cls: type[_S], data: Mapping[str, Any], *, source: str) -> _S:
    """A settings dataclass from a recipe table: every key must be a field (an unknown one is a
    ConfigError naming it and the known ones), and every error names ``source``."""
    names = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {names}")
    try:
        return cls(**dict(data))
    except (TypeError, ValueError) as err:  # ConfigError included: name the source
        raise ConfigError(f"{source}: {err}") from None


#: What a training setting changes: the weights reached, the epoch kept, or only how it runs.
SETTING_KINDS = ("trajectory", "selection", "run")


def _trajectory(default: Any) -> Any:
    return field(default=default, metadata={"kind": "trajectory"})


def _selection(default: Any) -> Any:
    return field(default=default, metadata={"kind": "selection"})


def _run(default: Any) -> Any:
    return field(default=default, metadata={"kind": "run"})


def settings_of_kind(kind: str) -> tuple[str, ...]:
    """The names of the :class:`TrainSettings` fields of one of :data:`SETTING_KINDS`."""
    if kind not in SETTING_KINDS:
        raise ValueError(f"kind {kind!r} is not one of {SETTING_KINDS}")
    return tuple(f.name for f in dataclasses.fields(TrainSettings) if f.metadata["kind"] == kind)


@dataclass
class TrainSettings:
    """Optimisation settings of one training stage (one table of a recipe file).

    The defaults are the paper's student settings (Adam, learning rate 1e-3, batch 128, 20
    epochs), with a cosine schedule.
    """

    # Each field says what it changes (SETTING_KINDS): "trajectory" settings change the weights
    # a run reaches, "selection" ones which epoch is kept, "run" ones only how it runs. Resuming
    # warns about changed trajectory settings; the teacher-student pipeline retrains a stage
    # whose trajectory or selection settings changed, never for a run setting.
    epochs: int = _run(20)  # (the schedule spans the epochs: resuming checks them apart)
    batch_size: int = _trajectory(128)
    optimizer: str = _trajectory("adam")
    lr: float = _trajectory(1e-3)
    weight_decay: float = _trajectory(0.0)
    momentum: float = _trajectory(0.9)
    nesterov: bool = _trajectory(True)
    schedule: str = _trajectory("cosine")
    warmup_epochs: float = _trajectory(0.0)
    min_lr_ratio: float = _trajectory(0.0)
    cycles: list[int] | None = field(default=None, metadata={"kind": "trajectory"})
    epoch_fraction: float = _trajectory(1.0)
    task_weights: dict[str, float] = field(
        default_factory=lambda: {"va": 1.0, "expression": 1.0, "au": 1.0},
        metadata={"kind": "trajectory"},
    )
    label_smoothing: float = _trajectory(0.0)
    grad_clip: float | None = _trajectory(None)
    amp: str = _run("auto")
    channels_last: bool = _run(True)
    num_workers: int | str = _run("auto")
    pin_memory: bool | None = _run(None)
    seed: int = _trajectory(0)
    deterministic: bool = _run(False)
    select_metric: str = _selection("score")
    eval_every: int = _selection(1)
    device: str = _run("auto")
    progress: bool = _run(True)
    max_steps_per_epoch: int | None = _trajectory(None)
    num_threads: int | None = _run(None)
    #: Score the starting weights on the validation data before the first epoch ("epoch 0"):
    #: ``best/`` then holds the start until an epoch beats it, so a fine-tuning run never
    #: returns a model that validates worse than the one it started from. ``None`` (the
    #: default): on when a recipe starts from pretrained weights (``[model] init``), off for a
    #: model trained from scratch and for a Trainer made by hand.
    score_start: bool | None = _selection(None)
    #: Hold the model to a frozen copy of its starting point ("learning without forgetting"):
    #: ``{au = 1.0}`` keeps the action units a fine-tuning set does not label,
    #: ``{expression = 0.5}`` keeps some of what the start knew about expressions.
    distill_start: dict[str, float] = field(default_factory=dict, metadata={"kind": "trajectory"})
    #: Softening of the expression distributions distilled by ``distill_start``.
    distill_temperature: float = _trajectory(2.0)
    #: The backbone's learning rate is ``lr * backbone_lr_scale`` (the pyramid and the heads
    #: use ``lr``): below 1 for fine-tuning, 0 freezes the backbone's weights.
    backbone_lr_scale: float = _trajectory(1.0)
    #: Validate and save ``(1 - a) * start + a * trained`` weights instead of the trained ones
    #: (weight-space ensembling, "WiSE-FT", Wortsman et al. 2022): below 1, a fine-tuned model
    #: keeps more of what the start knew for the same gain on the new data. Training itself
    #: (and ``last.pt``) follows the trained weights.
    interpolate_start: float = _selection(1.0)
    #: Distil the start also on this many images inverted from its BatchNorm statistics
    #: (:mod:`affectfpn.recipes.replay`): they stand in for the start's own training data, so
    #: what it knew about faces unlike yours is held too, not only its outputs on your faces.
    #: 0 (the default) is off; each step then also runs a batch of them (the same size).
    replay_synthetic: int = _trajectory(0)
    #: The weight of that distillation (every task the start and the model share).
    replay_weight: float = _trajectory(1.0)
    #: Optimisation steps that make the replay images.
    replay_iterations: int = _trajectory(300)
    #: Make grey replay images (the shipped models were trained on grey faces); ``false`` for a
    #: start trained on colour faces.
    replay_grey: bool = _trajectory(True)
    #: When the run finishes, fit one expression temperature of ``best/`` on the validation
    #: data (:func:`affectfpn.evaluation.calibrate`; several validation sets count the same)
    #: and save it in ``best/config.json``, so that its probabilities are calibrated for your
    #: data: a start's temperature (or per-face calibrator) was fitted to other faces and to
    #: other weights. ``done.json`` and the run's summary report the ECE before and after.
    calibrate: bool = _selection(False)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"train.optimizer {self.optimizer!r} is not adam, adamw or sgd")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"train.schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}"
            )
        if self.schedule == "cosine_restarts":
            cycles = self.cycles
            if (
                not isinstance(cycles, list | tuple)
                or not cycles
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cycles)
            ):
                raise ConfigError(
                    "train.cycles must list the epochs of each cosine cycle, e.g. [12, 18], "
                    f"with schedule = 'cosine_restarts'; got {cycles!r}"
                )
            if sum(cycles) != int(self.epochs):
                raise ConfigError(
                    f"train.cycles {list(cycles)} add up to {sum(cycles)} epochs but train.epochs "
                    f"is {self.epochs}: make them agree"
                )
            self.cycles = [int(c) for c in cycles]
        elif self.cycles is not None:
            raise ConfigError("train.cycles is only used with schedule = 'cosine_restarts'")
        self.amp = amp_mode(self.amp, name="train.amp")
        if not 0 < self.epoch_fraction <= 1:
            raise ConfigError("train.epoch_fraction must be in (0, 1]")
        for name in ("epochs", "batch_size", "eval_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"train.{name} must be at least 1")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if not isinstance(self.task_weights, Mapping):
            raise ConfigError("train.task_weights must be a table such as {va = 1.0, au = 2.0}")
        for task, weight in self.task_weights.items():
            if task not in TASKS:
                raise ConfigError(
                    f"train.task_weights: unknown task {task!r}; the tasks are {list(TASKS)}"
                )
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigError(f"train.task_weights.{task} must be a number, got {weight!r}")
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"train.task_weights.{task} must be finite and >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError("train.grad_clip must be positive (or left out)")
        if self.num_workers != "auto" and (
            isinstance(self.num_workers, bool | str) or int(self.num_workers) < 0
        ):
            raise ConfigError(
                f"train.num_workers must be 'auto' (the machine's cores, at most 8) or a number "
                f">= 0, got {self.num_workers!r}"
            )
        if self.max_steps_per_epoch is not None and int(self.max_steps_per_epoch) < 1:
            raise ConfigError("train.max_steps_per_epoch must be at least 1 (or left out)")
        if not isinstance(self.distill_start, Mapping):
            raise ConfigError("train.distill_start must be a table such as {au = 1.0}")
        for task, weight in self.distill_start.items():
            if task not in TASKS:
                raise ConfigError(
                    f"train.distill_start: unknown task {task!r}; the tasks are {list(TASKS)}"
                )
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise ConfigError(f"train.distill_start.{task} must be a number, got {weight!r}")
            if not (math.isfinite(weight) and weight >= 0):
                raise ConfigError(f"train.distill_start.{task} must be finite and >= 0")
        for name, least in (("replay_synthetic", 0), ("replay_iterations", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"train.{name} must be an integer >= {least}, got {value!r}")
        if isinstance(self.replay_weight, bool) or not (
            isinstance(self.replay_weight, int | float)
            and math.isfinite(self.replay_weight)
            and self.replay_weight >= 0
        ):
            raise ConfigError(
                f"train.replay_weight must be a finite number >= 0, got {self.replay_weight!r}"
            )
        if not isinstance(self.replay_grey, bool):
            raise ConfigError(f"train.replay_grey must be true or false, got {self.replay_grey!r}")
        if not self.distill_temperature > 0:
            raise ConfigError("train.distill_temperature must be positive")
        if isinstance(self.interpolate_start, bool) or not (
            isinstance(self.interpolate_start, int | float) and 0 < self.interpolate_start <= 1
        ):
            raise ConfigError(
                f"train.interpolate_start must be in (0, 1] (1: the trained weights as they "
                f"are), got {self.interpolate_start!r}"
            )
        if not isinstance(self.calibrate, bool):
            raise ConfigError(f"train.calibrate must be true or false, got {self.calibrate!r}")
        if not (math.isfinite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0):
            raise ConfigError("train.backbone_lr_scale must be a number >= 0")
        if self.select_metric != "score" and "/" not in self.select_metric:
            raise ConfigError(
                f"train.select_metric {self.select_metric!r} must be 'score' or 'task/metric' "
                "such as 'expression/accuracy'"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "train") -> "TrainSettings":
        """Build from a recipe table; an unknown key is an error naming it."""
        return settings_from_dict(cls, data, source=source)


# ------------------------------------------------------------------------------ distribution
def init_distributed(device_type: str, *, timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    NCCL on CUDA, gloo on the CPU. A single process returns the trivial :class:`DistInfo`.

    Args:
        device_type: ``"cuda"`` or another device type.
        timeout: How long a collective waits for the other processes (default: PyTorch's);
            raise it when one rank works alone for long while the others wait.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        if timeout is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


class EpochFractionSampler(Sampler[int]):
    """Each epoch, a fresh random ``fraction`` of the dataset, split across ranks.

    The permutation depends only on ``(seed, epoch)``; rank ``r`` of ``w`` takes every ``w``-th
    index of the epoch's sample starting at ``r``, so ranks never overlap and together see each
    drawn sample exactly once (the sample is trimmed to a multiple of ``w``).
    """

    def __init__(
        self,
        size: int,
        *,
        fraction: float = 1.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if size <= 0:
            raise ConfigError("the training dataset is empty")
        if size < world_size:
            raise ConfigError(
                f"the training dataset has {size} samples, fewer than the {world_size} processes"
            )
        if not 0 < fraction <= 1:
            raise ConfigError(f"the epoch fraction must be in (0, 1], got {fraction}")
        self.size = size
        self.fraction = fraction
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose sample the next iteration draws."""
        self.epoch = epoch

    def _count(self) -> int:
        count = min(self.size, max(self.world_size, round(self.size * self.fraction)))
        return count - count % self.world_size

    def epoch_indices(self) -> list[int]:
        """All ranks' indices for this epoch, before splitting."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, 1))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        return order[: self._count()]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return self._count() // self.world_size


def _mix(*values: int) -> int:
    """A deterministic 63-bit seed from several integers."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % (2**32)
    random.seed(seed)
    np.random.seed(seed)


# ------------------------------------------------------------------------------ the trainer


def lr_factor(settings: TrainSettings, steps_per_epoch: int, step: int) -> float:
    """The learning rate of optimisation step ``step`` (from 0), as a fraction of ``settings.lr``.

    Warm-up rises linearly over ``warmup_epochs``; ``cosine`` then decays to ``min_lr_ratio`` by
    the last step; ``cosine_restarts`` (SGDR, Loshchilov & Hutter 2017) runs one such cosine per
    entry of ``cycles``, each starting again at the full rate (the warm-up belongs to the first).
    A ``cosine_restarts`` run whose first cycle has the length of an earlier ``cosine`` run
    repeats that run's schedule step for step, so it can resume from its checkpoint.
    """
    s = settings
    warmup = int(s.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if s.schedule == "constant":
        return 1.0
    start, end = 0, s.epochs * steps_per_epoch
    if s.schedule == "cosine_restarts" and s.cycles:
        for cycle in s.cycles:
            end = start + cycle * steps_per_epoch
            if step < end:
                break
            start = end
        else:  # after the last step: the end of the last cycle
            start = end - s.cycles[-1] * steps_per_epoch
    begin = max(start, warmup)
    progress = min(1.0, (step - begin) / max(1, end - begin))
    if s.schedule == "step":
        return 0.1 ** int(progress * 3)  # /10 after a third and two thirds of the run
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Train an :class:`~affectfpn.AffectFPN` on a dataset of training samples.

    Args:
        model: The model to train (its ``config.tasks`` decide which losses apply).
        train_set: A dataset of training-sample dicts (see :mod:`affectfpn.recipes.datasets`).
        val_set: Optional validation data, scored with the ABAW2 metrics every epoch: one
            dataset, or ``{name: dataset}`` to score several apart (the best epoch is then the
            one with the best mean of their scores, each set counting equally).
        settings: Optimisation settings.
        output_dir: Folder for checkpoints, the best model and metric logs.
        model_card: Metadata for the card saved with the best model.
        augment: Batch augmentation applied to training batches on the device (the datasets then
            only need to deliver face crops at the model's input size).
        teacher: The model to hold the trained one to with ``settings.distill_start`` (default:
            a frozen copy of ``model`` as it is when the trainer is made, i.e. the start).
    """

    def __init__(
        self,
        model: AffectFPN,
        train_set: Dataset[dict[str, Any]],
        *,
        val_set: Dataset[dict[str, Any]] | Mapping[str, Dataset[dict[str, Any]]] | None = None,
        settings: TrainSettings | None = None,
        output_dir: str | Path,
        model_card: dict[str, Any] | None = None,
        augment: BatchAugment | None = None,
        teacher: AffectFPN | None = None,
    ) -> None:
        self.settings = settings or TrainSettings()
        self.augment = augment
        self._aug_generator = torch.Generator()
        self.output_dir = Path(output_dir)
        self.model_card = dict(model_card or {})
        s = self.settings
        if s.num_threads is not None:
            torch.set_num_threads(s.num_threads)
        requested = resolve_device(s.device)
        self.dist = init_distributed(requested.type)
        if requested.type == "cuda" and self.dist.world_size > 1:
            requested = torch.device("cuda", self.dist.local_rank)
        self.device = requested
        if s.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.teacher: AffectFPN | None = None
        self._distill_au: tuple[list[int], list[int]] | None = None
        self._distill_weights: dict[str, float] = {}
        #: ``{task: weight}`` of the distillation on the synthetic replay images
        self._replay_weights: dict[str, float] = {}
        #: the replay images (uint8, on the CPU), made when :meth:`fit` starts
        self._replay_images: torch.Tensor | None = None
        self._replay_generator = torch.Generator()
        distill = {k: float(v) for k, v in s.distill_start.items() if v}
        replaying = bool(s.replay_synthetic and s.replay_weight)
        if distill or replaying:
            import copy

            source = teacher if teacher is not None else copy.deepcopy(model)
            both = set(source.config.tasks) & set(model.config.tasks)
            self._distill_weights = {k: v for k, v in distill.items() if k in both}
            skipped = sorted(set(distill) - both)
            if skipped:
                logger.info(
                    "train.distill_start: %s left out (the start %s and the trained model %s do "
                    "not both have them)",
                    skipped,
                    list(source.config.tasks),
                    list(model.config.tasks),
                )
            if replaying:
                self._replay_weights = {k: float(s.replay_weight) for k in sorted(both)}
            if self._distill_weights or self._replay_weights:
                self.teacher, self._distill_au = _distill_teacher(
                    source, model, {**self._replay_weights, **self._distill_weights}
                )
                self.teacher.to(self.device)
        self.model = model.to(self.device)
        #: the starting weights, for ``interpolate_start`` (None when it is 1)
        self._start_state: dict[str, torch.Tensor] | None = None
        if s.interpolate_start < 1:
            self._start_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if self.teacher is not None:
            self.teacher.to(memory_format=self.memory_format)
        self.ddp_model: nn.Module = self.model
        if self.dist.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        check_labels(
            train_set,
            model.config.tasks,
            split="train",
            required=True,
            held=tuple(self._distill_weights),
        )
        if isinstance(val_set, Mapping):
            if not val_set:
                raise ConfigError("val_set: an empty table of validation sets; pass None instead")
            for name, part in val_set.items():
                check_labels(part, model.config.tasks, split=f"val {name}", required=False)
        else:
            check_labels(val_set, model.config.tasks, split="val", required=False)
        self._au_columns = _au_columns(model.config)
        self.train_set = train_set
        self.val_set = val_set
        #: DataLoader worker processes: ``num_workers``, where "auto" is the cores this process
        #: may use (at most 8), as many as PyTorch suggests.
        self.loader_workers = resolve_workers(s.num_workers)
        self.amp_dtype = amp_dtype(self.device, self.settings.amp)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        self.sampler = EpochFractionSampler(
            len(train_set),  # type: ignore[arg-type]
            fraction=s.epoch_fraction,
            seed=s.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.steps_per_epoch = math.ceil(len(self.sampler) / s.batch_size)
        if s.max_steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, s.max_steps_per_epoch)
        self.optimizer = self._build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.epoch = 0
        self.best_score = -math.inf
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup helpers
    def _autocast(self) -> AbstractContextManager[Any]:
        return autocast(self.device, self.amp_dtype)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        # (decay?, backbone?) -> parameters; the backbone's groups take lr * backbone_lr_scale
        buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim <= 1 or name.endswith(".bias")
            backbone = name.startswith("backbone.") and s.backbone_lr_scale != 1.0
            if backbone and s.backbone_lr_scale == 0:
                continue
            buckets.setdefault((not no_decay, backbone), []).append(p)
        groups: list[dict[str, Any]] = []
        for decay in (True, False):
            for backbone in (False, True):
                params = buckets.get((decay, backbone))
                if not params and (backbone or s.backbone_lr_scale != 1.0):
                    continue
                group: dict[str, Any] = {
                    "params": params or [],
                    "weight_decay": s.weight_decay if decay else 0.0,
                }
                if backbone:
                    group["lr"] = s.lr * s.backbone_lr_scale
                groups.append(group)
        if s.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.nesterov)
        if s.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=s.lr)
        return torch.optim.Adam(groups, lr=s.lr)

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.settings, self.steps_per_epoch, step)

    def _loader(self, dataset: Dataset[Any], sampler: Sampler[int], seed: int) -> DataLoader[Any]:
        s = self.settings
        pin = s.pin_memory if s.pin_memory is not None else self.device.type == "cuda"
        return DataLoader(
            dataset,
            batch_size=s.batch_size,
            sampler=sampler,
            num_workers=self.loader_workers,
            pin_memory=pin,
            drop_last=False,
            persistent_workers=False,
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed),
        )

    def _to_device(self, batch: Mapping[str, Any], *, train: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in batch.items():
            out[k] = v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        if self._au_columns is not None:  # a model of fewer AUs: their columns, in its order
            for key in ("au", "au_mask"):
                if isinstance(out.get(key), torch.Tensor):
                    out[key] = out[key][:, self._au_columns]
        if not train and isinstance(out.get("au"), torch.Tensor):
            # Scored against decisions: a teacher's soft AU label counts as present from 0.5.
            out["au"] = (out["au"] >= 0.5).to(out["au"].dtype)
        image = out["image"]
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        if train and self.augment is not None:
            image = self.augment(image, self._aug_generator)
        out["image"] = normalize(image, self.model.config).contiguous(
            memory_format=self.memory_format
        )
        return out

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        """Where the resumable checkpoint lives: ``<output_dir>/last.pt``."""
        return self.output_dir / CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Write ``last.pt`` atomically (rank 0 only).

        The state goes to a temporary file in the same folder, is flushed to the disk, and then
        renamed over ``last.pt``: a process killed at any moment leaves either the previous
        checkpoint or the new one, never a partial file.
        """
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "history": json.dumps(self.history),
            "config": json.dumps(self.model.config.to_dict()),
            "settings": json.dumps(dataclasses.asdict(self.settings)),
        }
        with atomic_open(self.checkpoint_path, "wb", durable=True) as f:
            torch.save(state, f)

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files that a killed process left in the output folder."""
        if not self.dist.is_main or not self.output_dir.is_dir():
            return
        remove_stale_temporaries(self.output_dir)

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Resume from ``last.pt`` if it exists; returns whether it did."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            return False
        state = read_checkpoint(path)
        saved_config = json.loads(state["config"])
        if saved_config != self.model.config.to_dict():
            raise ConfigError(
                f"{path}: this checkpoint was written for another model configuration; "
                "use a new output folder or the same recipe"
            )
        saved_settings = json.loads(state.get("settings", "{}"))
        now = dataclasses.asdict(self.settings)
        changed = [
            k for k in settings_of_kind("trajectory") if saved_settings.get(k, now[k]) != now[k]
        ]
        if saved_settings.get("epochs", now["epochs"]) != now["epochs"] and (
            now["schedule"] != "constant"
        ):
            changed.append("epochs")  # the schedule spans all epochs
        schedule_keys = {"schedule", "warmup_epochs", "min_lr_ratio", "cycles", "epochs"}
        if changed and self._same_schedule_so_far(saved_settings, state):
            # e.g. a cosine run extended by restarts: the steps taken had these rates anyway
            changed = [k for k in changed if k not in schedule_keys]
            logger.info("%s: the new schedule repeats the saved one up to this point", path)
        if changed:
            logger.warning(
                "%s was written with other values of %s; the resumed run will not match an "
                "uninterrupted one",
                path,
                ", ".join(f"train.{k}" for k in changed),
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # The rate of the next step comes from this run's schedule (it differs from the saved one
        # when, say, a finished cosine run is extended by a restart).
        factor = self._lr_factor(self.scheduler.last_epoch)
        for group, base_lr in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, strict=True
        ):
            group["lr"] = base_lr * factor
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.history = json.loads(state["history"])
        logger.info("resumed from %s at epoch %d", path, self.epoch)
        return True

    def _same_schedule_so_far(self, saved_settings: dict[str, Any], state: dict[str, Any]) -> bool:
        """Whether the saved run's learning rates equal this run's for every step it took."""
        fields = {f.name for f in dataclasses.fields(TrainSettings)}
        # settings missing from an older checkpoint had their default values then
        merged = {**dataclasses.asdict(TrainSettings()), **saved_settings}
        try:
            saved = TrainSettings(**{k: v for k, v in merged.items() if k in fields})
            steps = int(state["scheduler"]["last_epoch"])
        except (ConfigError, KeyError, TypeError, ValueError):
            return False
        if saved.batch_size != self.settings.batch_size:
            return False
        spe = self.steps_per_epoch
        return all(
            math.isclose(lr_factor(saved, spe, i), lr_factor(self.settings, spe, i), rel_tol=1e-12)
            for i in range(steps)
        )

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = True, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train for ``settings.epochs`` epochs (continuing from ``last.pt`` when ``resume``).

        Args:
            resume: Continue from ``last.pt`` when it exists (a finished run returns at once).
            stop_after_epoch: Return once this many epochs are done, leaving a checkpoint to
                resume from later; the schedule still spans ``settings.epochs``, so a run
                trained in slices ends exactly where an uninterrupted run ends.

        Returns:
            A summary: ``best_epoch`` (1-based, as the ``epoch`` of the log records; ``None``
            before any epoch was selected), ``best_score``, ``history`` (one record per epoch),
            ``output_dir`` and ``finished`` (whether every epoch is done).
        """
        s = self.settings
        self._remove_stale_temporaries()
        if resume and self.load_checkpoint():
            self._write_logs()  # drop rows of an epoch that was interrupted after logging
        end = s.epochs if stop_after_epoch is None else min(s.epochs, int(stop_after_epoch))
        if s.score_start and self.val_set is not None and self.epoch == 0 and not self.history:
            self._score_start()
        if self._replay_weights and self._replay_images is None and self.epoch < end:
            self._replay_images = self._prepare_replay()
        while self.epoch < end:
            record = self.train_one_epoch(self.epoch)
            if self.val_set is not None and (
                (self.epoch + 1) % s.eval_every == 0 or self.epoch + 1 == s.epochs
            ):
                with self._interpolated():
                    metrics, score = self.validate()
                    record["val"] = metrics
                    record["val_score"] = score
                    if score > self.best_score:
                        self.best_score, self.best_epoch = score, self.epoch
                        self._save_best(metrics)
            elif self.val_set is None:
                self.best_epoch = self.epoch
                with self._interpolated():
                    self._save_best({})
            self.epoch += 1
            self.history.append(record)
            self.save_checkpoint()
            self._write_logs()
            self._log_epoch(record)
        self._sync_buffers()
        finished = self.epoch >= s.epochs
        if finished:
            if self.best_epoch == START_EPOCH and self.dist.is_main:
                logger.warning(
                    "no epoch beat the starting weights on the validation data (%s %.4f): "
                    "%s holds the start, unchanged",
                    s.select_metric,
                    self.best_score,
                    self.output_dir / "best",
                )
            self._write_done(self._calibrate_best())
        if self.dist.world_size > 1:
            dist.barrier()
        summary: dict[str, Any] = {
            "best_epoch": self._best_epoch_number(),
            "best_score": self.best_score,
            "history": self.history,
            "output_dir": str(self.output_dir),
            "finished": finished,
        }
        calibration = self._read_done().get("calibration") if finished else None
        if calibration is not None:
            summary["calibration"] = calibration
        return summary

    @contextlib.contextmanager
    def _interpolated(self) -> Iterator[None]:
        """Inside, the model holds ``(1 - a) * start + a * trained`` (``interpolate_start``);
        the trained weights are back afterwards."""
        if self._start_state is None:
            yield
            return
        a = float(self.settings.interpolate_start)
        trained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        mixed = {
            k: torch.lerp(self._start_state[k].to(v.dtype), v, a) if v.is_floating_point() else v
            for k, v in trained.items()
        }
        self.model.load_state_dict(mixed)
        try:
            yield
        finally:
            self.model.load_state_dict(trained)

    def _score_start(self) -> None:
        """Epoch 0: the starting weights, scored as every epoch will be and kept as ``best/``."""
        metrics, score = self.validate()
        record: dict[str, Any] = {"epoch": 0, "start": True, "val": metrics, "val_score": score}
        self.history.append(record)
        self.best_score, self.best_epoch = score, START_EPOCH
        self._save_best(metrics)
        self._write_logs()
        self._log_epoch(record)

    def _distill(
        self, output: AffectFPNOutput | None, images: torch.Tensor, weights: Mapping[str, float]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """How far ``output`` (the model's, on ``images``) moved from the start's outputs."""
        assert self.teacher is not None
        assert output is not None
        with torch.no_grad(), self._autocast():
            held = self.teacher(images)
        return distill_loss(
            output,
            held,
            weights=weights,
            temperature=self.settings.distill_temperature,
            au_index=self._distill_au,
        )

    def _prepare_replay(self) -> torch.Tensor:
        """The synthetic replay images of ``train.replay_synthetic``: made from the start by the
        main process (or read back from the run's folder on a resume), then read by the rest."""
        from affectfpn.recipes.replay import load_or_synthesize

        s = self.settings
        start = self.teacher
        assert start is not None
        path = self.output_dir / "replay.safetensors"

        def load() -> torch.Tensor:
            return load_or_synthesize(
                path,
                start,
                int(s.replay_synthetic),
                iterations=int(s.replay_iterations),
                grey=bool(s.replay_grey),
                seed=int(s.seed),
                device=self.device,
            )

        if self.dist.is_main:
            images = load()
        if self.dist.world_size > 1:
            dist.barrier()
        if not self.dist.is_main:
            images = load()
        return images

    def _replay_batch(self, n: int) -> torch.Tensor:
        """``n`` replay images drawn at random, augmented as the training batch is."""
        assert self._replay_images is not None
        index = torch.randint(0, len(self._replay_images), (n,), generator=self._replay_generator)
        image = self._replay_images[index].to(self.device, non_blocking=True).float().div_(255.0)
        if self.augment is not None:
            image = self.augment(image, self._replay_generator)
        return normalize(image, self.model.config).contiguous(memory_format=self.memory_format)

    def validate(self) -> tuple[dict[str, Any], float]:
        """The validation metrics and the score that chooses the best epoch.

        With one validation set: ``({task: metrics}, score)``. With several (``{name:
        dataset}``): ``({name: {task: metrics}}, mean of their scores)``.
        """
        if self.val_set is None:
            raise ConfigError("no validation data: pass val_set to the Trainer")
        name = self.settings.select_metric
        if isinstance(self.val_set, Mapping):
            metrics = {key: self.evaluate(part) for key, part in self.val_set.items()}
            scores = [select_score(m, name) for m in metrics.values()]
            return metrics, float(sum(scores) / len(scores))
        single = self.evaluate(self.val_set)
        return single, select_score(single, name)

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over this epoch's fraction of the training set."""
        s = self.settings
        seed = _mix(s.seed, epoch, 2)
        seed_everything(_mix(seed, self.dist.rank))
        self._aug_generator.manual_seed(_mix(seed, self.dist.rank, 4))
        self._replay_generator.manual_seed(_mix(seed, self.dist.rank, 5))
        self.sampler.set_epoch(epoch)
        loader = self._loader(self.train_set, self.sampler, seed=_mix(seed, self.dist.rank, 3))
        self.ddp_model.train()
        sums: dict[str, float] = {}
        count = 0
        start = time.perf_counter()
        bar = _progress(
            loader,
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{s.epochs}",
            enabled=s.progress and self.dist.is_main,
        )
        labelled = 0
        for step, batch in enumerate(_worker_errors(bar)):
            if step >= self.steps_per_epoch:
                break
            batch = self._to_device(batch, train=True)
            labelled += _count_labels(batch, self.model.config.tasks)
            images = batch["image"]
            replay = (
                self._replay_batch(int(images.shape[0]))
                if self._replay_images is not None
                else None
            )
            replayed: AffectFPNOutput | None = None
            with self._autocast():
                if replay is None:
                    output = self.ddp_model(images)
                else:  # one forward pass (DDP), split after
                    joint = self.ddp_model(torch.cat([images, replay]))
                    output, replayed = _split_output(joint, int(images.shape[0]))
            loss, parts = multitask_loss(
                output, batch, weights=s.task_weights, label_smoothing=s.label_smoothing
            )
            for out, held_images, weights, name in (
                (output, images, self._distill_weights, "hold"),
                (replayed, replay, self._replay_weights, "replay"),
            ):
                if weights and held_images is not None:
                    extra, held_parts = self._distill(out, held_images, weights)
                    loss = loss + extra
                    parts = {**parts, **{f"{name}_{k}": v for k, v in held_parts.items()}}
            if not torch.isfinite(loss.detach()):
                values = {k: float(v.detach()) for k, v in parts.items()}
                raise AffectFPNError(
                    f"the training loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                    f"{step + 1} (task losses: {values}); lower train.lr, set train.grad_clip, "
                    "or check the labels"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if s.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = int(batch["image"].shape[0])
            count += n
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
            if hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if count and not labelled:
            raise ConfigError(
                f"epoch {epoch + 1} saw {count} training samples and not one label for the "
                f"model's tasks {list(self.model.config.tasks)}: check the training data's label "
                "columns or folders (expected: expression class folders, or CSV columns "
                "'expression', 'valence'/'arousal', 'AU1'..'AU26')"
            )
        elapsed = time.perf_counter() - start
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_samples": count * self.dist.world_size,
            "train_seconds": round(elapsed, 2),
            "images_per_second": round(count * self.dist.world_size / max(elapsed, 1e-9), 2),
        }
        for name, total in sums.items():
            record[f"train_{name}"] = total / max(count, 1)
        return record

    @torch.inference_mode()
    def evaluate(self, dataset: Dataset[dict[str, Any]]) -> dict[str, Any]:
        """Score the model on ``dataset`` (split across ranks, merged) with the ABAW2 metrics."""
        self._sync_buffers()
        self.model.eval()
        size = len(dataset)  # type: ignore[arg-type]
        indices = list(range(self.dist.rank, size, self.dist.world_size))
        loader = self._loader(dataset, _ListSampler(indices), seed=0)
        meter = MultiTaskMeter(
            self.model.config.tasks,
            num_units=len(self.model.config.action_units),
            au_from_logits=True,
        )
        batches = _progress(loader, total=len(loader), desc="validation", enabled=False)
        for batch in _worker_errors(batches):
            batch = self._to_device(batch)
            with self._autocast():
                output = self.model(batch["image"])
            output = type(output)(*(None if t is None else t.float() for t in output))
            if not all(t is None or bool(torch.isfinite(t).all()) for t in output):
                raise AffectFPNError(
                    f"the model's outputs are not finite after {self.epoch + 1} epoch(s): the "
                    "training diverged; lower train.lr, set train.grad_clip, or check the labels"
                )
            meter.update(output, batch)
        if self.dist.world_size > 1:
            for m in meter.meters.values():
                m.sync()
        return {task: values for task, values in meter.compute().items()}

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics).

        DistributedDataParallel copies rank 0's buffers to the others at the start of each
        forward pass, so after the last training step each rank holds the statistics of its own
        batch; validation (and the weights a caller reads) must use the ones rank 0 saves.
        """
        if self.dist.world_size <= 1:
            return
        for buffer in self.model.buffers():
            dist.broadcast(buffer.data, src=0)

    def _save_best(self, metrics: Mapping[str, Any], *, model: AffectFPN | None = None) -> None:
        """Save ``model`` (default: the model being trained) as ``best/``, with its validation
        ``metrics`` on the card (rank 0)."""
        if not self.dist.is_main:
            return
        card = dict(self.model_card)
        if metrics:
            flat = {k: v for k, v in _flatten(metrics).items() if isinstance(v, int | float)}
            card.setdefault("metrics", {})
            card["metrics"] = {**card["metrics"], "validation": flat}
        (model or self.model).save_pretrained(self.output_dir / "best", model_card=card)

    def _write_logs(self) -> None:
        """Rewrite ``metrics.jsonl`` and ``metrics.csv`` from the history (rank 0, atomic)."""
        if not self.dist.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write(
            self.output_dir / "metrics.jsonl", lambda tmp: tmp.write_text(lines, encoding="utf-8")
        )
        rows = [{k: _csv_cell(v) for k, v in _flatten(r).items()} for r in self.history]
        columns: list[str] = []
        for row in rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(
            self.output_dir / "metrics.csv",
            lambda tmp: tmp.write_text(buffer.getvalue(), encoding="utf-8"),
        )

    def _log_epoch(self, record: Mapping[str, Any]) -> None:
        """One readable line per epoch; ``metrics.jsonl`` / ``metrics.csv`` keep every value."""
        if not self.dist.is_main:
            return
        logger.info("%s", format_epoch(record, self.settings.epochs, self.settings.select_metric))

    def _best_epoch_number(self) -> int | None:
        """The selected epoch, counted from 1 as in the logs (0: the starting weights);
        ``None`` when none was."""
        if self.best_epoch == START_EPOCH:
            return 0
        return self.best_epoch + 1 if self.best_epoch >= 0 else None

    def _read_done(self) -> dict[str, Any]:
        """``done.json`` of the output folder (empty when absent or unreadable)."""
        path = self.output_dir / DONE_NAME
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return old if isinstance(old, dict) else {}

    def _calibrate_best(self) -> dict[str, Any] | None:
        """``calibrate``: fit one expression temperature of ``best/`` on the validation data
        and save ``best/`` with it (rank 0). Returns what ``done.json`` records (the
        temperature, and per validation set the ECE and NLL before and after), or ``None``
        when there is nothing to fit. A finished run that is resumed does not fit again."""
        s = self.settings
        best = self.output_dir / "best"
        if not (s.calibrate and self.dist.is_main and self.val_set is not None):
            return None
        if "expression" not in self.model.config.tasks or not (best / "config.json").is_file():
            return None
        old = self._read_done()
        if old.get("best_epoch") == self._best_epoch_number() and "calibration" in old:
            return dict(old["calibration"])
        from affectfpn.calibration import ece_changes
        from affectfpn.evaluation import calibrate

        model = AffectFPN.from_pretrained(best)
        sets = dict(self.val_set) if isinstance(self.val_set, Mapping) else {"val": self.val_set}
        try:
            temperature, report = calibrate(
                model, sets, batch_size=s.batch_size, device=str(self.device)
            )
        except InputError as err:
            logger.info("train.calibrate: %s; best/ keeps its expression temperature", err)
            return None
        dropped = model.drop_calibrator()
        model.config = model.config.replace(expression_temperature=stored_temperature(temperature))
        record = next((r for r in self.history if r["epoch"] == self._best_epoch_number()), {})
        self._save_best(record.get("val") or {}, model=model)
        logger.info(
            "train.calibrate: best/ gets the expression temperature %.4f fitted on the "
            "validation data (ECE %s)%s",
            temperature,
            ece_changes(report),
            "; the start's per-face calibrator is dropped" if dropped else "",
        )
        return {"temperature": float(temperature), "sets": report}

    def _write_done(self, calibration: Mapping[str, Any] | None = None) -> None:
        if not self.dist.is_main:
            return
        done: dict[str, Any] = {
            "epochs": self.epoch,
            "best_epoch": self._best_epoch_number(),
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
        }
        if calibration is not None:
            done["calibration"] = dict(calibration)
        path = self.output_dir / DONE_NAME
        if path.is_file():
            old = self._read_done()
            if old and all(old.get(k) == v for k, v in done.items()):
                return  # unchanged: keep the first finishing time
        done["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write(
            path, lambda tmp: tmp.write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``last.pt`` written by :class:`Trainer`: tensors and plain data only.

    Read with ``torch.load(weights_only=True)``, which runs no code from the file. ``"model"``
    is the model's state dict and ``"config"`` its configuration as JSON text.

    Raises:
        ConfigError: the file cannot be read, or is not a checkpoint of this format.
    """
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file: name it and say what to do
        raise ConfigError(
            f"{path}: cannot read this checkpoint ({err}); delete it to start over"
        ) from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise ConfigError(f"{path}: checkpoint format {found} not understood")
    return state


def training_finished(output_dir: str | Path, epochs: int) -> bool:
    """Whether a run in ``output_dir`` already trained ``epochs`` epochs.

    True when its ``done.json`` says so, or (for runs stopped just before writing the marker)
    when ``last.pt`` holds that many epochs.
    """
    folder = Path(output_dir)
    done = folder / DONE_NAME
    if done.is_file():
        try:
            if int(json.loads(done.read_text(encoding="utf-8"))["epochs"]) >= epochs:
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass
    last = folder / CHECKPOINT_NAME
    if last.is_file():
        try:
            state = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
            return int(state["epoch"]) >= epochs
        except Exception:  # an unreadable checkpoint is not a finished run
            return False
    return False


class _ListSampler(Sampler[int]):
    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def select_score(metrics: Mapping[str, Mapping[str, Any]], name: str) -> float:
    """The validation figure that chooses the best epoch.

    ``"score"`` sums the ABAW2 scores of every task scored (the challenge's overall score);
    ``"task/metric"`` (e.g. ``"expression/accuracy"``) picks one figure.
    """
    if name == "score":
        return float(sum(float(values["score"]) for values in metrics.values()))
    task, _, key = name.partition("/")
    try:
        return float(metrics[task][key])
    except KeyError:
        raise ConfigError(
            f"train.select_metric {name!r} is not among the validation metrics"
        ) from None


def _split_output(output: AffectFPNOutput, n: int) -> tuple[AffectFPNOutput, AffectFPNOutput]:
    """The outputs of the first ``n`` images of a batch, and of the rest."""
    head = AffectFPNOutput(*(None if t is None else t[:n] for t in output))
    tail = AffectFPNOutput(*(None if t is None else t[n:] for t in output))
    return head, tail


def _distill_teacher(
    source: AffectFPN, model: AffectFPN, weights: Mapping[str, float]
) -> tuple[AffectFPN, tuple[list[int], list[int]] | None]:
    """A frozen, eval-mode teacher for ``distill_start``, and the AU columns the two share."""
    au_index: tuple[list[int], list[int]] | None = None
    if "au" in weights:
        ours, theirs = list(model.config.action_units), list(source.config.action_units)
        shared = [u for u in ours if u in theirs]
        if not shared:
            raise ConfigError(
                f"train.distill_start.au: the starting model's action units {theirs} share none "
                f"with the trained model's {ours}"
            )
        if shared != ours or shared != theirs:
            au_index = ([ours.index(u) for u in shared], [theirs.index(u) for u in shared])
    teacher = source.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, au_index


def _au_columns(config: Any) -> list[int] | None:
    """Columns of the datasets' AU arrays (all of :data:`ACTION_UNITS`) that a model learns,
    in its ``action_units`` order; ``None`` when it learns all of them in that order."""
    if "au" not in config.tasks or tuple(config.action_units) == tuple(ACTION_UNITS):
        return None
    unknown = [u for u in config.action_units if u not in ACTION_UNITS]
    if unknown:
        raise ConfigError(
            f"model.action_units {unknown} are not among the action units the datasets label "
            f"({', '.join(ACTION_UNITS)}): train a subset of those"
        )
    return [ACTION_UNITS.index(u) for u in config.action_units]


def resolve_workers(num_workers: int | str) -> int:
    """DataLoader worker processes for a ``num_workers`` setting: "auto" is the cores this
    process may use, at most 8 (what PyTorch suggests as the maximum); a number is itself."""
    if num_workers != "auto":
        return int(num_workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporary files and folders that killed processes left under ``folder``.

    Every write of a run goes through :func:`affectfpn.io.atomic_write` (or ``atomic_open``): a
    hidden temporary beside its target (``.<stem>.<random>.tmp<suffix>``) renamed over the
    target when complete, so any hidden ``*.tmp`` / ``*.tmp.*`` entry is a leftover.
    """
    import shutil

    if not folder.is_dir():
        return
    for pattern in (".*.tmp", ".*.tmp.*"):
        for stale in sorted(folder.rglob(pattern)):
            logger.info("removing %s, left by an interrupted run", stale)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _worker_errors(batches: Any) -> Iterator[Any]:
    """Iterate ``batches``, re-raising a package error from a DataLoader worker with its own
    message instead of the worker's whole traceback that PyTorch puts in front of it."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except AffectFPNError as err:
            text = str(err)
            if "Original Traceback" not in text:
                raise
            last = [line for line in text.strip().splitlines() if line.strip()][-1].strip()
            _, sep, message = last.partition(f"{type(err).__name__}: ")
            raise type(err)(message if sep else last) from None
        yield batch


def _count_labels(batch: Mapping[str, Any], tasks: Sequence[str]) -> int:
    """Number of labels for ``tasks`` in a collated batch (by the ``<task>_mask`` entries)."""
    total = 0
    for task in tasks:
        mask = batch.get(f"{task}_mask")
        if isinstance(mask, torch.Tensor):
            total += int(mask.reshape(mask.shape[0], -1).any(dim=1).sum())
    return total


def check_labels(
    dataset: Dataset[Any] | None,
    tasks: Sequence[str],
    *,
    split: str,
    required: bool,
    held: Sequence[str] = (),
) -> None:
    """Refuse a split without labels for any of ``tasks``; warn about a task without labels.

    Only datasets that count their labels (``counts()``, as every dataset of
    :mod:`affectfpn.recipes` does) are checked here; the training loop checks the others.

    Raises:
        ConfigError: ``dataset`` is empty, or (``required``) holds no label for any task.
    """
    if dataset is None:
        return
    name = getattr(dataset, "name", type(dataset).__name__)
    if len(dataset) == 0:  # type: ignore[arg-type]
        what = (
            "remove it to select the last epoch"
            if split == "val"
            else "check its path and contents"
        )
        raise ConfigError(f"the {split} split ({name}) holds no sample: {what}")
    counts_fn = getattr(dataset, "counts", None)
    if not callable(counts_fn):
        return
    counts = counts_fn()
    present = {task: int(counts.get(task, 0)) for task in tasks}
    if required and not any(present.values()):
        summary = getattr(dataset, "labels_summary", lambda: "")()
        raise ConfigError(
            f"the {split} split ({name}, {counts.get('samples', len(dataset))} samples) holds "  # type: ignore[arg-type]
            f"no label for the model's tasks {list(tasks)}: check the label columns or folders "
            "(expected: expression class folders, or CSV columns 'expression', 'valence' and "
            "'arousal', 'AU1'..'AU26', spelt so)"
            + (f"; what was read: {' '.join(summary.split())}" if summary else "")
        )
    for task, n in present.items():
        if n == 0:
            if split == "train" and task in held:
                logger.info(
                    "the train split (%s) has no %s label: that head is held to the start's "
                    "outputs (train.distill_start)",
                    name,
                    task,
                )
                continue
            logger.warning(
                "the %s split (%s) has no %s label: %s",
                split,
                name,
                task,
                "the model learns nothing for it"
                if split == "train"
                else "its validation metrics are not computed",
            )


def format_epoch(record: Mapping[str, Any], epochs: int, select_metric: str) -> str:
    """One readable line for an epoch's record, e.g. ``epoch 3/26  loss 1.2034  lr 0.0421 ...``."""

    def num(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e-3 and value else f"{value:.4f}"
        return str(value)

    parts = [f"epoch {record['epoch']}/{epochs}"]
    if record.get("start"):
        parts.append("(the starting weights)")
    for key in sorted(k for k in record if k.startswith("train_") and k != "train_samples"):
        if key != "train_seconds":
            parts.append(f"{key.removeprefix('train_')} {num(record[key])}")
    parts.append(f"lr {num(record.get('lr'))}")
    val = record.get("val")
    if isinstance(val, Mapping):
        nested = all(
            isinstance(v, Mapping) and all(isinstance(x, Mapping) for x in v.values())
            for v in val.values()
        )
        sets = val.items() if nested else [("", val)]
        for set_name, tasks in sets:
            label = f"val {set_name} " if set_name else "val "
            for task, values in tasks.items():
                if isinstance(values, Mapping):
                    main = {k: v for k, v in values.items() if isinstance(v, int | float)}
                    shown = [k for k in ("score", "accuracy", "f1", "ccc") if k in main]
                    parts += [f"{label}{task}/{k} {num(main[k])}" for k in shown]
    if "val_score" in record:
        parts.append(f"[{select_metric} {num(record['val_score'])}]")
    seconds = record.get("train_seconds")
    if seconds is not None:
        parts.append(f"{float(seconds):.0f} s, {record.get('images_per_second')} img/s")
    return "  ".join(parts)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _csv_cell(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _progress(iterable: Any, *, total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI).
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
