"""The training loop: nanoGPT's habits in torchtitan's shape.

``run_training(cfg, options)`` picks the device, joins the torchrun process
group, loads the data, checks the output can be written, builds the
model/optimizer, resumes, and trains: :meth:`Trainer.train_step` runs
:meth:`~Trainer.forward_backward_step` on a micro-batch (autocast; GradScaler
only for fp16) and, after the last of ``grad_accum_steps``,
:meth:`~Trainer.optimizer_step` (clipping, ``zero_grad(set_to_none=True)``);
:meth:`~Trainer.end_epoch` evaluates and checkpoints. The checkpointer
(:mod:`~aibuild.train.checkpoint`) owns what is saved; the metrics writer
(:mod:`~aibuild.train.metrics`) writes every line and record. Only rank 0 logs
and writes. SIGTERM/SIGINT stop at the next optimizer step, save a checkpoint
and raise :class:`Interrupted` (exit 128 + signal number: 143 for SIGTERM, 130
for SIGINT).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from aibuild.errors import TrainError
from aibuild.train import checkpoint as ckpt
from aibuild.train.config import TrainConfig
from aibuild.train.data import (
    DataBundle,
    ResumableSampler,
    ShardSampler,
    batch_collate,
    describe,
    load_data,
)
from aibuild.train.device import (
    AUTOCAST_DTYPES,
    DeviceWait,
    auto_cpu_threads,
    determinism,
    device_name,
    peak_memory_bytes,
    peak_tensor_tflops,
    pick_device,
    resolve_precision,
    versions,
)
from aibuild.train.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup,
    init_distributed,
)
from aibuild.train.metrics import MetricsWriter, Throughput, warn_every_rank
from aibuild.train.models import (
    build_model,
    count_parameters,
    generate,
    training_flops_per_token,
)
from aibuild.train.schedule import lr_at


class Interrupted(TrainError):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        where = f"; checkpoint saved to {checkpoint}" if checkpoint else ""
        super().__init__(
            f"training stopped by {signal.Signals(signum).name}{where} "
            "(continue with --resume auto)"
        )


@dataclass
class TrainOptions:
    """Per-run choices that are not part of the profile."""

    output: Path
    resume: str | None = None
    dry_run: bool = False
    handle_signals: bool = True
    stream: TextIO | None = None  # progress output (default: stdout)


class SignalFlag:
    """Set by SIGTERM/SIGINT; the loop checks it at each optimizer step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        # A second signal acts at once (the default handler).
        for number, prev in self._previous.items():
            signal.signal(number, prev)

    @contextlib.contextmanager
    def installed(self, enabled: bool) -> Iterator[SignalFlag]:
        import threading

        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for number, prev in self._previous.items():
                signal.signal(number, prev)


def _loader(
    dataset: Dataset[Any], sampler: Any, cfg: TrainConfig, device: torch.device
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        collate_fn=batch_collate,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        persistent_workers=cfg.num_workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps loaders off the global RNG
    )


class Trainer:
    """One training run. Built by :func:`run_training`; ``run()`` does the work."""

    def __init__(
        self, cfg: TrainConfig, opts: TrainOptions, device: torch.device, info: DistInfo
    ) -> None:
        self.cfg, self.opts, self.device, self.info = cfg, opts, device, info
        self.precision = resolve_precision(cfg.precision, device)
        self.metrics = MetricsWriter(
            info.is_main, opts.stream, None if opts.dry_run else opts.output
        )
        self.data: DataBundle = load_data(cfg)
        self.metrics.line(f"data: {describe(self.data)}")
        if info.is_main and not opts.dry_run:  # the data is there; can the results be written?
            ckpt.prepare_output(opts.output)
            self.metrics.open()
        model = build_model(cfg, self.data).to(device)
        self.channels_last = cfg.channels_last and cfg.model == "cnn"
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.raw_model = model
        self.core: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
        self.model: nn.Module = self.core
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.core, device_ids=ids)
        self.optimizer = self._make_optimizer()
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.precision)
        self.checkpointer = ckpt.Checkpointer(
            opts.output,
            cfg,
            info,
            model=self.raw_model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            device=device,
            extra={
                "dataset": {"name": self.data.name, "num_classes": self.data.num_classes},
                "vocab": self.data.vocab,
            },
            write=not opts.dry_run,
        )

        self.sampler = ResumableSampler(self.data.train, info, cfg.seed)
        self.train_loader = _loader(self.data.train, self.sampler, cfg, device)
        self.eval_loader = None
        if self.data.eval is not None and len(self.data.eval) > 0:
            shards = ShardSampler(len(self.data.eval), info)
            self.eval_loader = _loader(self.data.eval, shards, cfg, device)
        self.batches_per_epoch = math.ceil(self.sampler.samples_per_epoch() / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.pos = ckpt.Position()
        self.micro = 0  # micro-batches since the last optimizer step
        self.loss = torch.zeros(())  # the last micro-batch's (scaled) loss
        self.lr = cfg.lr
        self.last_eval: dict[str, float] = {}
        self.last_loss = float("nan")
        self.throughput = Throughput()
        self.wait_for_device = DeviceWait(device)  # one wait a log window, blocking
        self.start = time.perf_counter()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=self.device.type == "cuda")

    # -- the loop ---------------------------------------------------------------------------

    def run(self, flag: SignalFlag) -> dict[str, Any]:
        cfg = self.cfg
        self._resume()
        n_params = self._announce_model()
        self.start = time.perf_counter()
        status = None
        self.core.train()
        while self.pos.epoch < cfg.epochs and status is None:
            status = self.train_epoch(flag)
        if status == "interrupted":
            saved = self.save() if self.checkpointer.last_saved_step != self.pos.step else None
            raise Interrupted(
                int(flag.signum or signal.SIGTERM), saved or self.checkpointer.newest()
            )
        if not self.opts.dry_run and self.checkpointer.last_saved_step != self.pos.step:
            self.save()
        return self.finish(status or "completed", n_params)

    def train_epoch(self, flag: SignalFlag) -> str | None:
        """Train to the end of the epoch or a stop; the stop's status, or None to go on."""
        self.sampler.epoch = self.pos.epoch
        self.sampler.skip = self.pos.batch_in_epoch * self.cfg.batch_size
        self.micro = 0
        status = None
        self.throughput.start()
        for x, y in self.train_loader:
            if self.train_step(x, y):
                status = self.after_optimizer_step(flag)
                if status is not None:
                    break
        self.throughput.lap()
        if self.opts.dry_run:
            if self.eval_loader is not None:
                self.last_eval = self.evaluate(max_batches=1)
            return "dry_run"
        if self.pos.batch_in_epoch >= self.batches_per_epoch:
            self.end_epoch(save=status != "interrupted")
        return status

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> bool:
        """One micro-batch; True when it completed an optimizer step."""
        last_micro = (
            self.micro + 1 == self.cfg.grad_accum_steps
            or self.pos.batch_in_epoch + 1 == self.batches_per_epoch
            or self.opts.dry_run
        )
        self.loss = self.forward_backward_step(x, y, sync=last_micro)
        self.micro += 1
        self.pos.batch_in_epoch += 1
        self.throughput.add(x.shape[0] * self.info.world_size)
        if not last_micro:
            return False
        self.optimizer_step()
        return True

    def forward_backward_step(self, x: torch.Tensor, y: torch.Tensor, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; DDP all-reduces only when ``sync``."""
        x, y = self._to_device(x, y)
        no_sync = self.info.enabled and not sync
        with self.model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with self._autocast():
                loss = self._loss(self.model(x), y) / self.cfg.grad_accum_steps
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        return loss

    def optimizer_step(self) -> None:
        cfg = self.cfg
        self.lr = lr_at(
            self.pos.step,
            lr=cfg.lr,
            total_steps=self.total_steps,
            warmup_steps=cfg.warmup_steps,
            min_lr=cfg.min_lr,
            schedule=cfg.lr_schedule,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        if cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pos.step += 1
        self.micro = 0

    def after_optimizer_step(self, flag: SignalFlag) -> str | None:
        """Log, checkpoint, and decide whether to stop (the status) or go on (None)."""
        cfg, step = self.cfg, self.pos.step
        if step % cfg.log_every == 0 or self.opts.dry_run:
            self._log_step()
        # Ranks agree on stopping at log steps only: the all-reduce syncs the device,
        # which every step would cost GPU throughput.
        stop = flag.signum is not None
        if self.info.enabled:
            agree = step % cfg.log_every == 0 or step == self.total_steps
            stop = agree and any_rank(stop, self.device, self.info)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and not stop:
            self.save()
        if stop:
            return "interrupted"
        if self.opts.dry_run:
            return "dry_run"
        if cfg.max_steps and step >= cfg.max_steps:
            return "max_steps"
        return None

    def _log_step(self) -> None:
        self.wait_for_device()  # the window's work is done: the read below does not spin
        self.last_loss = float(self.loss.detach()) * self.cfg.grad_accum_steps
        self.metrics.train_step(
            step=self.pos.step,
            epoch=self.pos.epoch + 1,
            epochs=self.cfg.epochs,
            total_steps=self.total_steps,
            loss=self.last_loss,
            lr=self.lr,
            rate=self.throughput.lap(),
            elapsed=time.perf_counter() - self.start,
        )

    def end_epoch(self, save: bool) -> None:
        """Evaluate, move to the next epoch, checkpoint."""
        if self.cfg.eval and self.eval_loader is not None:
            self.last_eval = self.evaluate()
            self.metrics.evaluation(
                step=self.pos.step,
                epoch=self.pos.epoch + 1,
                epochs=self.cfg.epochs,
                values=self.last_eval,
            )
        self.pos.epoch += 1
        self.pos.batch_in_epoch = 0
        if save:
            self.save()

    def save(self) -> Path | None:
        return self.checkpointer.save(self.pos)

    # -- pieces -----------------------------------------------------------------------------

    def _resume(self) -> None:
        found = (
            None
            if self.opts.dry_run
            else self.checkpointer.resume(self.opts.resume, self.metrics.warn)
        )
        if found is None:
            if self.opts.resume == "auto" and not self.opts.dry_run:
                self.metrics.line(f"no checkpoint in {self.checkpointer.directory}: starting fresh")
            return
        path, state = found
        self.pos = self.checkpointer.restore(
            state, path, epochs=self.cfg.epochs, batches_per_epoch=self.batches_per_epoch
        )
        self.metrics.line(
            f"resumed from {path} (step {self.pos.step}, epoch {self.pos.epoch + 1}, "
            f"batch {self.pos.batch_in_epoch})"
        )

    def _announce_model(self) -> int:
        cfg = self.cfg
        n_params = count_parameters(self.raw_model)
        if cfg.cpu_threads == 0:  # auto: sized to the host's work (device.auto_cpu_threads)
            batch_values = cfg.batch_size * math.prod(self.data.input_shape)
            threads = auto_cpu_threads(
                self.device.type, n_params, batch_values, torch.get_num_threads()
            )
            if threads is not None:
                torch.set_num_threads(threads)  # restored by determinism() on exit
        self.metrics.line(
            f"model: {cfg.model} ({n_params:,} parameters) on {device_name(self.device)}, "
            f"precision {self.precision}, world size {self.info.world_size}, "
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
        )
        return n_params

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        y = y.to(self.device, non_blocking=non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if self.data.task == "lm":
            return F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1), reduction=reduction
            )
        return F.cross_entropy(logits.float(), y, reduction=reduction)

    @torch.no_grad()
    def evaluate(self, max_batches: int | None = None) -> dict[str, float]:
        assert self.eval_loader is not None
        self.core.eval()
        loss_sum = correct = count = 0.0
        for i, (x, y) in enumerate(self.eval_loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = self._to_device(x, y)
            with self._autocast():
                logits = self.core(x)
            loss_sum += float(self._loss(logits, y, reduction="sum"))
            correct += float((logits.argmax(dim=-1) == y).sum())
            count += y.numel()
        loss_sum, correct, count = all_reduce_sum(
            [loss_sum, correct, count], self.device, self.info
        )
        self.core.train()
        loss = loss_sum / max(count, 1)
        out = {"loss": loss, "accuracy": correct / max(count, 1)}
        if self.data.task == "lm":
            out["perplexity"] = math.exp(min(loss, 50.0))
        return out

    def _sample(self) -> str | None:
        """A language model's sample after training (rank 0), or None."""
        vocab = self.data.vocab
        if self.data.task != "lm" or self.cfg.sample_tokens <= 0 or not self.info.is_main:
            return None
        if not vocab:
            return None
        start_tok = vocab.index("\n") if "\n" in vocab else 0
        prompt = torch.tensor([[start_tok]], device=self.device)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        with self._autocast():
            ids = generate(
                self.core, prompt, self.cfg.sample_tokens, self.cfg.block_size, generator=gen
            )
        text = "".join(vocab[i] for i in ids[0].tolist())
        self.metrics.line("sample:\n" + text)
        return text

    def _model_flops(self, samples_per_s: float) -> dict[str, Any]:
        """Tokens/s, achieved model TFLOP/s and MFU (per GPU, against its dense peak) for
        the transformer; nothing for the other models."""
        per_token = training_flops_per_token(self.raw_model, self.cfg)
        if per_token is None or samples_per_s <= 0:
            return {}
        tokens = samples_per_s * self.cfg.block_size
        achieved = tokens * per_token / 1e12 / self.info.world_size
        peak = peak_tensor_tflops(self.device, self.precision)
        return {
            "tokens_per_s": round(tokens, 1),
            "model_tflops_per_device": round(achieved, 3),
            "mfu": round(achieved / peak, 4) if peak else None,
        }

    def finish(self, status: str, n_params: int) -> dict[str, Any]:
        """The summary (printed, and with the final weights written unless a dry run)."""
        elapsed = time.perf_counter() - self.start
        sample = self._sample()
        per_s, per_cpu_s, train_s = self.throughput.rates()
        summary = {
            "status": status,
            "steps": self.pos.step,
            "epochs_completed": self.pos.epoch,
            "train_loss": self.last_loss,
            "eval": self.last_eval,
            # steady state: after the first log window (compilation, autotuning)
            "samples_per_s": round(per_s, 2) if per_s else None,
            **self._model_flops(per_s or 0.0),
            "train_time_s": round(train_s, 3),
            "warmup_s": round(self.throughput.warmup_s, 3),
            # per CPU-second of this process: steadier than wall time on a shared host
            "samples_per_cpu_s": round(per_cpu_s, 2) if per_cpu_s else None,
            "elapsed_s": round(elapsed, 3),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "device": str(self.device),
            "device_name": device_name(self.device),
            "world_size": self.info.world_size,
            "precision": self.precision,
            "model": self.cfg.model,
            "parameters": n_params,
            "dataset": describe(self.data),
            "versions": versions(),
            "config": self.cfg.to_dict(),
            "sample": sample,
        }
        self.checkpointer.save_model()
        self.metrics.summary(summary)
        return summary

    def close(self) -> None:
        """Close the metrics files and drop the DDP wrapper: its reducer holds the process
        group, which must be gone when :func:`~aibuild.train.distributed.cleanup` destroys
        it."""
        self.metrics.close()
        self.model = self.core


def run_training(cfg: TrainConfig, opts: TrainOptions) -> dict[str, Any]:
    """Train as configured; returns the summary (also written to ``summary.json``)."""
    existing = ckpt.list_checkpoints(ckpt.checkpoint_dir(opts.output))
    if existing and not opts.resume and not opts.dry_run:
        # A fresh run here would mix its checkpoints with the old ones (and keep-last-K
        # would delete the new, lower-numbered ones first).
        raise TrainError(
            f"{ckpt.checkpoint_dir(opts.output)} already holds checkpoints of an earlier run "
            f"(newest: {existing[-1].name}): pass --resume auto to continue it, or use "
            "another --output"
        )
    device = pick_device(cfg.device)
    info = init_distributed(device.type)
    flag = SignalFlag()
    trainer: Trainer | None = None
    try:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        with determinism(cfg), flag.installed(opts.handle_signals):
            if info.enabled:
                # model init must match across ranks (DDP also broadcasts rank 0's weights)
                torch.manual_seed(cfg.seed)
            trainer = Trainer(cfg, opts, device, info)
            if info.enabled:
                torch.manual_seed(cfg.seed + 1_000_003 * info.rank)
            summary = trainer.run(flag)
            # Every rank reaches the end before the group is torn down.
            barrier(info)
            return summary
    finally:
        if trainer is not None:
            trainer.close()  # drops DDP, which holds the group
        if not cleanup(info):
            warn_every_rank(
                "the process group is still referenced after "
                "destroy_process_group (see aibuild/train/distributed.py)"
            )
