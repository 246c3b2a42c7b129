"""The training loop: nanoGPT's habits in torchtitan's shape.

``run_training(cfg, options)`` picks the device, joins the torchrun process
group, builds data/model/optimizer, resumes, trains with autocast (GradScaler
only for fp16), gradient accumulation and clipping, evaluates each epoch,
checkpoints atomically, and writes metrics JSON lines plus a final summary.
Only rank 0 logs and writes. SIGTERM/SIGINT stop at the next optimizer step,
save a checkpoint and raise :class:`Interrupted` (exit 128 + signal number:
143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from aibuild import __version__
from aibuild.errors import TrainError
from aibuild.train import checkpoint as ckpt
from aibuild.train.config import TrainConfig
from aibuild.train.data import DataBundle, batch_collate, describe, load_data
from aibuild.train.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup,
    init_distributed,
)
from aibuild.train.models import build_model, count_parameters, generate
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
class RunOptions:
    """Per-run choices that are not part of the profile."""

    output: Path
    resume: str | None = None
    dry_run: bool = False
    handle_signals: bool = True
    stream: TextIO | None = None  # progress output (default: stdout)


# ---------------------------------------------------------------------------- setup helpers


def pick_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainError(
                f"--device {name}: no usable CUDA device (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'})"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TrainError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices")
        return device
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` = bf16 on CUDA when supported, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
SMALL_MODEL = 1_000_000  # parameters: below this, cpu_threads auto means one thread


class ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch and number of already-seen samples can be set.

    The order of an epoch is a function of (seed, epoch) alone, so skipping the
    first ``skip`` indices resumes mid-epoch exactly where a run stopped.
    """

    def __init__(self, dataset: Dataset[Any], info: DistInfo, seed: int) -> None:
        self.base: DistributedSampler[Any] = DistributedSampler(
            dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
        )
        self.epoch = 0
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        self.base.set_epoch(self.epoch)
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)

    def samples_per_epoch(self) -> int:
        return len(self.base)


class ShardSampler(Sampler[int]):
    """Every world_size-th index from rank: each sample evaluated exactly once in total."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Reporter:
    """Progress for people: an updating line on a TTY, plain lines otherwise. Rank 0 only."""

    def __init__(self, enabled: bool, stream: TextIO | None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._open_line = False

    def progress(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()


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


@contextlib.contextmanager
def determinism(cfg: TrainConfig) -> Iterator[None]:
    """Seeds, CPU threads and (optionally) deterministic algorithms; restores the global
    flags afterwards."""
    was_det = torch.are_deterministic_algorithms_enabled()
    was_bench = torch.backends.cudnn.benchmark
    was_threads = torch.get_num_threads()
    if cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det)
        torch.backends.cudnn.benchmark = was_bench
        torch.set_num_threads(was_threads)


def versions() -> dict[str, Any]:
    return {
        "aibuild": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version()  # type: ignore[no-untyped-call]
        if torch.backends.cudnn.is_available()  # type: ignore[no-untyped-call]
        else None,
    }


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """One training run. Built by :func:`run_training`; ``run()`` does the work."""

    def __init__(
        self, cfg: TrainConfig, opts: RunOptions, device: torch.device, info: DistInfo
    ) -> None:
        self.cfg, self.opts, self.device, self.info = cfg, opts, device, info
        self.precision = resolve_precision(cfg.precision, device)
        if self.precision == "fp16" and device.type == "cpu":
            raise TrainError("precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        if (
            self.precision == "bf16"
            and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise TrainError(
                f"precision bf16 is not supported on {device_name(device)}; use fp16 or fp32"
            )
        self.report = Reporter(info.is_main, opts.stream)
        self.output = opts.output
        self.ckpt_dir = ckpt.checkpoint_dir(self.output)

        self.data: DataBundle = load_data(cfg)
        self.report.line(f"data: {describe(self.data)}")
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
        self.autocast_dtype = _DTYPES.get(self.precision)

        pin = cfg.pin_memory and device.type == "cuda"
        self.sampler = ResumableSampler(self.data.train, info, cfg.seed)
        loader_gen = torch.Generator().manual_seed(cfg.seed)  # keeps loaders off the global RNG
        workers = cfg.num_workers
        self.train_loader = DataLoader(
            self.data.train,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=batch_collate,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            generator=loader_gen,
        )
        self.eval_loader = None
        if self.data.eval is not None and len(self.data.eval) > 0:
            self.eval_loader = DataLoader(
                self.data.eval,
                batch_size=cfg.batch_size,
                sampler=ShardSampler(len(self.data.eval), info),
                collate_fn=batch_collate,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
        self.batches_per_epoch = math.ceil(self.sampler.samples_per_epoch() / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum_steps)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        # position
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.last_saved_step = -1
        self.last_eval: dict[str, float] = {}
        self.last_loss = float("nan")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        fused = self.device.type == "cuda"
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": "aibuild-train-checkpoint/1",
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": {"step": self.step},  # the LR is a pure function of the step
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate())},
            "config": self.cfg.to_dict(),
            "dataset": {"name": self.data.name, "num_classes": self.data.num_classes},
            "vocab": self.data.vocab,
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state(self, state: dict[str, Any], path: Path) -> None:
        try:
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise TrainError(
                f"checkpoint {path} does not fit this model/config ({first}); "
                "use another --output or drop --resume"
            ) from None
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.last_saved_step = self.step
        rng = state.get("rng", {})
        if self.info.enabled:
            # ranks must not share dropout masks: a fresh, rank-specific stream
            torch.manual_seed(self.cfg.seed + 1_000_003 * self.info.rank + self.step)
        else:
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if "python" in rng:
                py = rng["python"]
                random.setstate((py[0], tuple(py[1]), py[2]))
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)

    def save(self) -> Path | None:
        """Rank 0 writes a checkpoint at the current position; all ranks then meet."""
        path = None
        if self.info.is_main and not self.opts.dry_run:
            path = ckpt.save_checkpoint(
                self.state_dict(), self.ckpt_dir, self.step, self.cfg.keep_checkpoints
            )
        self.last_saved_step = self.step
        barrier(self.info)
        return path

    # -- steps ------------------------------------------------------------------------------

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

    def run(self, flag: SignalFlag) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        resume_path = (
            ckpt.find_resume(self.opts.resume, self.ckpt_dir) if not self.opts.dry_run else None
        )
        if resume_path is not None:
            self.load_state(ckpt.load_checkpoint(resume_path), resume_path)
            self.report.line(
                f"resumed from {resume_path} (step {self.step}, epoch {self.epoch + 1}, "
                f"batch {self.batch_in_epoch})"
            )
        elif self.opts.resume == "auto":
            self.report.line(f"no checkpoint in {self.ckpt_dir}: starting fresh")
        n_params = count_parameters(self.raw_model)
        if cfg.cpu_threads == 0 and self.device.type == "cpu" and n_params < SMALL_MODEL:
            # Tiny ops gain little from a second thread, and OpenMP threads spinning
            # against other load on a shared host cost up to 10x (measured on 2 cores).
            torch.set_num_threads(1)  # restored by determinism() on exit
        self.report.line(
            f"model: {cfg.model} ({n_params:,} parameters) on {device_name(self.device)}, "
            f"precision {self.precision}, world size {info.world_size}, "
            f"{self.steps_per_epoch} steps/epoch x {cfg.epochs} epochs"
        )
        metrics: TextIO | None = None
        if info.is_main and not self.opts.dry_run:
            self.output.mkdir(parents=True, exist_ok=True)
            metrics = (self.output / "metrics.jsonl").open("a", encoding="utf-8")
        start = time.perf_counter()
        train_time = 0.0  # wall seconds in the training loop (no eval, no checkpoints)
        self.train_cpu_time = 0.0  # this process's CPU seconds in the same spans
        samples_total = 0
        status = "completed"
        try:
            self.core.train()
            accum = cfg.grad_accum_steps
            while self.epoch < cfg.epochs:
                self.sampler.epoch = self.epoch
                self.sampler.skip = self.batch_in_epoch * cfg.batch_size
                micro = 0
                window_samples, window_start = 0, time.perf_counter()
                window_cpu = time.process_time()
                stop = False
                for x, y in self.train_loader:
                    x, y = self._to_device(x, y)
                    last_micro = (
                        micro + 1 == accum
                        or self.batch_in_epoch + 1 == self.batches_per_epoch
                        or self.opts.dry_run
                    )
                    sync = contextlib.nullcontext()
                    if info.enabled and not last_micro:
                        sync = self.model.no_sync()  # type: ignore[operator]
                    with sync:
                        with self._autocast():
                            logits = self.model(x)
                            loss = self._loss(logits, y) / accum
                        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                    micro += 1
                    self.batch_in_epoch += 1
                    window_samples += x.shape[0] * info.world_size
                    if not last_micro:
                        continue
                    lr = lr_at(
                        self.step,
                        lr=cfg.lr,
                        total_steps=self.total_steps,
                        warmup_steps=cfg.warmup_steps,
                        min_lr=cfg.min_lr,
                        schedule=cfg.lr_schedule,
                    )
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    if cfg.clip_grad_norm > 0:
                        self.scaler.unscale_(self.optimizer)
                        nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.clip_grad_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.step += 1
                    micro = 0
                    if self.step % cfg.log_every == 0 or self.opts.dry_run:
                        # .item() syncs the device: only at log steps
                        self.last_loss = float(loss.detach()) * accum
                        now = time.perf_counter()
                        rate = window_samples / max(now - window_start, 1e-9)
                        train_time += now - window_start
                        cpu_now = time.process_time()
                        self.train_cpu_time += cpu_now - window_cpu
                        samples_total += window_samples
                        window_samples, window_start, window_cpu = 0, now, cpu_now
                        record = {
                            "type": "train",
                            "step": self.step,
                            "epoch": self.epoch + 1,
                            "loss": round(self.last_loss, 6),
                            "lr": lr,
                            "samples_per_s": round(rate, 2),
                            "elapsed_s": round(now - start, 3),
                        }
                        if metrics is not None:
                            metrics.write(json.dumps(record) + "\n")
                            metrics.flush()
                        self.report.progress(
                            f"epoch {self.epoch + 1}/{cfg.epochs} "
                            f"step {self.step}/{self.total_steps} "
                            f"loss {self.last_loss:.4f} lr {lr:.2e} {rate:,.0f} samples/s"
                        )
                    # Ranks agree on stopping at log steps only: the all-reduce syncs the
                    # device, which every step would cost GPU throughput.
                    stop_signal = flag.signum is not None
                    if info.enabled:
                        agree = self.step % cfg.log_every == 0 or self.step == self.total_steps
                        stop_signal = agree and any_rank(stop_signal, self.device, info)
                    if (
                        cfg.checkpoint_every
                        and self.step % cfg.checkpoint_every == 0
                        and not stop_signal
                    ):
                        self.save()
                    if stop_signal:
                        status = "interrupted"
                        stop = True
                        break
                    if (cfg.max_steps and self.step >= cfg.max_steps) or self.opts.dry_run:
                        status = "max_steps" if not self.opts.dry_run else "dry_run"
                        stop = True
                        break
                now = time.perf_counter()
                train_time += now - window_start
                self.train_cpu_time += time.process_time() - window_cpu
                samples_total += window_samples
                if self.opts.dry_run:
                    if self.eval_loader is not None:
                        self.last_eval = self.evaluate(max_batches=1)
                    break
                if self.batch_in_epoch >= self.batches_per_epoch:
                    if cfg.eval and self.eval_loader is not None:
                        self.last_eval = self.evaluate()
                        record = {
                            "type": "eval",
                            "step": self.step,
                            "epoch": self.epoch + 1,
                            **self.last_eval,
                        }
                        if metrics is not None:
                            metrics.write(json.dumps(record) + "\n")
                            metrics.flush()
                        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.last_eval.items())
                        self.report.line(f"epoch {self.epoch + 1}/{cfg.epochs} eval: {shown}")
                    self.epoch += 1
                    self.batch_in_epoch = 0
                    if status != "interrupted":
                        self.save()
                if stop:
                    break
            if status == "interrupted":
                assert flag.signum is not None or info.enabled
                saved = self.save() if self.last_saved_step != self.step else None
                if saved is None and info.is_main:
                    saved = (
                        ckpt.list_checkpoints(self.ckpt_dir)[-1]
                        if ckpt.list_checkpoints(self.ckpt_dir)
                        else None
                    )
                raise Interrupted(int(flag.signum or signal.SIGTERM), saved)
            if not self.opts.dry_run and self.last_saved_step != self.step:
                self.save()
            elapsed = time.perf_counter() - start
            summary = self._summary(status, elapsed, train_time, samples_total, n_params)
            if info.is_main and not self.opts.dry_run:
                ckpt.atomic_save(self.raw_model.state_dict(), self.output / "model.pt")
                _write_json(self.output / "summary.json", summary)
            return summary
        finally:
            if metrics is not None:
                metrics.close()

    def _summary(
        self, status: str, elapsed: float, train_time: float, samples: int, n_params: int
    ) -> dict[str, Any]:
        sample_text = None
        if (
            self.data.task == "lm"
            and self.cfg.sample_tokens > 0
            and self.info.is_main
            and self.data.vocab
        ):
            vocab = self.data.vocab
            start_tok = vocab.index("\n") if "\n" in vocab else 0
            prompt = torch.tensor([[start_tok]], device=self.device)
            gen = torch.Generator().manual_seed(self.cfg.seed)
            with self._autocast():
                ids = generate(
                    self.core, prompt, self.cfg.sample_tokens, self.cfg.block_size, generator=gen
                )
            sample_text = "".join(vocab[i] for i in ids[0].tolist())
            self.report.line("sample:\n" + sample_text)
        summary = {
            "status": status,
            "steps": self.step,
            "epochs_completed": self.epoch,
            "train_loss": self.last_loss,
            "eval": self.last_eval,
            "samples_per_s": round(samples / train_time, 2) if train_time > 0 else None,
            "train_time_s": round(train_time, 3),
            # per CPU-second of this process: steadier than wall time on a shared host
            "samples_per_cpu_s": (
                round(samples / self.train_cpu_time, 2) if self.train_cpu_time > 0 else None
            ),
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
            "sample": sample_text,
        }
        acc = self.last_eval.get("accuracy")
        ppl = self.last_eval.get("perplexity")
        tail = (
            f", eval perplexity {ppl:.2f}"
            if ppl is not None
            else (f", eval accuracy {acc:.2%}" if acc is not None else "")
        )
        rate = summary["samples_per_s"]
        self.report.line(
            f"{status}: {self.step} steps in {elapsed:.1f}s, "
            f"{rate if rate is not None else 0:,.0f} samples/s{tail}"
        )
        return summary


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_training(cfg: TrainConfig, opts: RunOptions) -> dict[str, Any]:
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
            return trainer.run(flag)
    finally:
        cleanup(info)
