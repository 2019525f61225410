"""Training: one config file per experiment, seeds, checkpoints and exact resume,
AMP on a GPU, and DDP under ``torchrun`` through the same code path.

Run folder ``RUN/``::

    config.json              the resolved config (written once; a resume reuses it)
    checkpoints/last.pt      model, optimiser, AMP scaler, step, elapsed seconds, config (atomic writes)
    metrics.csv              step, loss, lr, elapsed_s, val_psnr, val_ssim (rows past the checkpoint are
                             dropped on resume, so the file always matches the weights)
    curve.png                training loss and validation PSNR

Exact resume: training crops are a pure function of (seed, sample index)
(:class:`learn.data.RandomCrops`), the learning rate a pure function of the
step, and the optimiser state is checkpointed, so a run killed and resumed
reaches the same weights as an uninterrupted one. SIGTERM / Ctrl-C save a
checkpoint at the current step before exiting.

DDP: under ``torchrun --nproc_per_node=K`` each rank takes its share of every
global batch (``batch_size`` is global and must divide by K) with the gloo
backend on CPU and nccl on GPU; rank 0 writes the run folder.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import learn.models as models
from alignment.atomic import foreign_entries, write_bytes, write_json, write_text
from learn.cfa_phase import LEGACY_PHASE
from learn.config import ConfigError, defaults
from learn.config import validate as validate_config
from learn.curves import plot_curves
from learn.data import DataError, DatasetFolder, EvalTiles, RandomCrops, open_source
from learn.losses import build_loss
from learn.metrics import psnr, ssim
from learn.raw_space import AUTO, auto_input_space

DEFAULTS: dict[str, Any] = defaults()
METRIC_FIELDS = ["step", "loss", "lr", "elapsed_s", "val_psnr", "val_ssim"]
log = logging.getLogger(__name__)


def merge(base: dict, update: dict) -> dict:
    """Deep merge: nested dicts are merged, other values in ``update`` replace those in
    ``base``; a ``loss`` table replaces the default losses (it names the whole loss)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and k != "loss"
        out[k] = merge(out[k], v) if nested else copy.deepcopy(v)
    return out


def load_config(path: Path | str | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the TOML or JSON file at ``path``, then ``overrides`` (deep-merged),
    checked by :func:`learn.config.validate` (unknown keys, types, ranges).

    Raises :class:`ConfigError` naming the file and the key."""
    cfg = copy.deepcopy(DEFAULTS)
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            if path.suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10: the tomli dependency
                    import tomli as tomllib
                data = tomllib.loads(path.read_text())
            else:
                data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            raise ConfigError(f"{path}: cannot parse ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a table of sections, got {type(data).__name__}")
        try:
            validate_config(merge(cfg, data))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        cfg = merge(cfg, data)
    try:
        return validate_config(merge(cfg, overrides or {}))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


# settings a resume may change: the length of the run and how the machine runs it
RESUME_MAY_CHANGE = {("optim", "steps"), ("train", "threads"), ("data", "workers"), ("train", "amp")}


def config_differences(stored: dict, asked: dict) -> list[str]:
    """``"section.key: stored -> asked"`` for each setting in which a new request differs
    from a run's stored config, except :data:`RESUME_MAY_CHANGE`.  Dataset folders are
    compared as resolved paths; model arguments only where the request names them
    (a run on RGB data stores the ``in_channels`` it chose itself)."""
    out = []
    for section in ("model", "data", "optim", "loss", "train"):
        a, b = stored.get(section, {}), asked.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) in RESUME_MAY_CHANGE:
                continue
            va, vb = a.get(key), b.get(key)
            if section == "model" and key == "kwargs":
                va = {k: v for k, v in (va or {}).items() if k in (vb or {})}
            if section == "data" and key in ("root", "input_dir", "target_dir") and va and vb:
                va, vb = str(Path(va).resolve()), str(Path(vb).resolve())
            if va != vb:
                out.append(f"{section}.{key}: {va!r} -> {vb!r}")
    return out


def learning_rate(optim: dict, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine down to ``min_lr``."""
    lr, total, warm = float(optim["lr"]), int(optim["steps"]), int(optim.get("warmup", 0))
    if warm and step < warm:
        return lr * (step + 1) / warm
    if optim.get("schedule", "cosine") == "constant":
        return lr
    t = (step - warm) / max(1, total - warm)
    lo = float(optim.get("min_lr", 0.0))
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_model(config: dict) -> torch.nn.Module:
    """The model a config names (``model.name`` with ``model.kwargs``)."""
    return models.create(config["model"]["name"], **config["model"].get("kwargs", {}))


def load_checkpoint(path: Path | str) -> dict:
    """A checkpoint written by :func:`train` (a dict with ``model``, ``config``, ``step``, ...).

    ``path`` is a run folder or a checkpoint file.  Raises :class:`learn.data.DataError`
    naming the file for a missing, truncated or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
        if not path.is_file():
            raise DataError(path.parent.parent, "not a training run (no checkpoints/last.pt)")
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises pickle, zip, EOF and runtime errors for foreign or cut files
        raise DataError(path, f"not a checkpoint of isp-rig train ({type(err).__name__}: {err})") from None
    if not isinstance(ck, dict) or not {"model", "config", "step"} <= set(ck):
        raise DataError(path, "not a checkpoint of isp-rig train (no model, config and step)")
    return ck


def load_model(run_or_ckpt: Path | str) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode, CPU) and its config from a run folder or checkpoint file."""
    ck = load_checkpoint(run_or_ckpt)
    model = build_model(ck["config"])
    model.load_state_dict(ck["model"])
    return model.eval(), ck["config"]


def _atomic_save(obj: Any, path: Path) -> None:
    write_bytes(path, lambda fh: torch.save(obj, fh))


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))


@torch.no_grad()
def validate(model: torch.nn.Module, tiles: EvalTiles, device: torch.device, batch: int = 8) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM of ``model`` over fixed evaluation tiles (masked)."""
    was = model.training
    model.eval()
    ps, ss = [], []
    loader = DataLoader(tiles, batch_size=batch, shuffle=False,
                        collate_fn=lambda items: {k: torch.stack([it[k] for it in items])
                                                  for k in ("input", "target", "mask")})
    for b in loader:
        x, y, m = (b[k].to(device) for k in ("input", "target", "mask"))
        p = model(x)
        ps.append(psnr(p, y, m).cpu())
        ss.append(ssim(p, y, m).cpu())
    model.train(was)
    return float(torch.cat(ps).mean()), float(torch.cat(ss).mean())


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=METRIC_FIELDS)
    w.writeheader()
    w.writerows(rows)
    write_text(path, text.getvalue())


class _Stop:
    """Turns SIGTERM / SIGINT into a flag checked after each step (the step in flight completes)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def __enter__(self) -> "_Stop":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@dataclass
class _Process:
    """Where this process trains: DDP world size and ranks, and its device."""

    world: int
    rank: int
    local_rank: int
    device: torch.device


def _start_process() -> _Process:
    """Join the DDP group when run under torchrun (gloo on CPU, nccl on GPU) and pick the device."""
    world, rank, local_rank = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Process(world, rank, local_rank, device)


def _open_run(config: dict, out: Path, rank: int) -> tuple[dict, dict | None]:
    """Check the config and the run folder; returns (the config to train with, the
    checkpoint to resume or None).  A resume keeps the stored config (only the steps
    may be raised); other settings, or a folder of other files, raise ConfigError."""
    config = validate_config(config)
    data = config["data"]
    needed = ("root",) if data["kind"] == "dataset" else ("input_dir", "target_dir")
    missing = [f"data.{k}" for k in needed if not data.get(k)]
    if missing:
        raise ConfigError(f"{', '.join(missing)}: not given (the {data['kind']!r} data kind needs it)")
    last = out / "checkpoints" / "last.pt"
    _resolve_auto_input_space(data, rank)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if foreign_entries(out, lambda name: False) and not last.is_file() and not (out / "config.json").is_file():
        raise ConfigError(f"{out}: not empty and not a training run; give a new or empty folder")
    if not last.is_file():
        return config, None
    resume = load_checkpoint(last)
    resume["config"].setdefault("data", {}).setdefault("input_space", "raw")  # saved before the key existed
    resume["config"]["data"].setdefault("cfa_phase", LEGACY_PHASE)  # likewise
    stored = merge(DEFAULTS, resume["config"])  # a run saved before a key existed gets its default
    changed = config_differences(stored, config)
    if changed:
        raise ConfigError(f"{out} holds a run with other settings ({'; '.join(changed[:4])}): resume it with "
                          f"the settings it was started with (only the steps may be raised), or give another folder")
    for section, key in RESUME_MAY_CHANGE:  # how this machine runs it: as asked now
        stored[section][key] = config[section][key]
    stored["optim"]["steps"] = max(int(config["optim"]["steps"]), int(resume["config"]["optim"]["steps"]))
    config = stored
    if rank == 0:
        log.info("resuming %s from step %d of %d", out, int(resume["step"]), config["optim"]["steps"])
    return config, resume


def _resolve_auto_input_space(data: dict, rank: int) -> None:
    """Replace ``data.input_space = "auto"`` by the space it means for this training data
    (:func:`learn.raw_space.auto_input_space`), with one line saying which and why; the
    run then stores, evaluates and renders with that space."""
    if data.get("input_space", AUTO) != AUTO:
        return
    if data["kind"] != "dataset":
        data["input_space"] = "raw"
        return
    roots = [data["root"], *data.get("also_roots", [])]
    records = [r for root in roots for r in DatasetFolder.read(root).split("train")]
    space, why = auto_input_space(all(r.raw is not None for r in records), [r.phone_raw for r in records],
                                  [r.id for r in records])
    data["input_space"] = space
    if rank == 0:
        log.info("input space auto -> %s (%s)", space, why)


@dataclass
class _State:
    """What a training step changes, and what it needs to run."""

    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped by DDP when there is more than one process
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    memory_format: torch.memory_format
    step: int = 0
    elapsed: float = 0.0


def _build_state(config: dict, proc: _Process, resume: dict | None, init_from: Path | str | None) -> _State:
    """Model (seeded), optimiser and AMP scaler; from the checkpoint when resuming, from
    ``init_from``'s weights when fine-tuning."""
    tc, oc = config["train"], config["optim"]
    torch.manual_seed(int(tc["seed"]))
    memory_format = torch.channels_last if tc.get("channels_last", True) else torch.contiguous_format
    model = build_model(config).to(proc.device).to(memory_format=memory_format)  # NHWC: faster CPU convolutions
    if resume is None and init_from is not None:
        start = load_checkpoint(init_from)
        model.load_state_dict(start["model"])
        was = start["config"].get("data", {})
        for key, old in (("input_space", "raw"), ("cfa_phase", LEGACY_PHASE)):
            if was.get(key, old) != config["data"].get(key, old) and proc.rank == 0:
                log.warning("%s was trained with data.%s = %r, this run uses %r: the weights start from another "
                            "input (set data.%s to keep it)", init_from, key, was.get(key, old),
                            config["data"].get(key, old), key)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(oc["lr"]), weight_decay=float(oc["weight_decay"]))
    use_amp = bool(tc.get("amp", True)) and proc.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    state = _State(model, model, optimizer, scaler, use_amp, amp_dtype, memory_format)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        state.step, state.elapsed = int(resume["step"]), float(resume["elapsed_s"])
    if proc.world > 1:
        state.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[proc.local_rank] if proc.device.type == "cuda" else None)
    return state


def _train_loader(config: dict, source, proc: _Process, start: int, end: int) -> DataLoader:
    """Steps ``start`` .. ``end`` of the crop stream: each rank takes its share of every
    global batch; crops are a pure function of (seed, sample index), so a resumed run
    sees the same crops."""
    dc = config["data"]
    total_batch = int(dc["batch_size"])
    if total_batch % proc.world:
        raise ConfigError(f"data.batch_size {total_batch} does not divide by the {proc.world} processes")
    per_rank = total_batch // proc.world
    crops = RandomCrops(source, crop=int(dc["crop"]), seed=int(config["train"]["seed"]),
                        augment=bool(dc.get("augment", True)), min_valid=float(dc.get("min_valid", 0.5)))
    batches = [[s * total_batch + proc.rank * per_rank + k for k in range(per_rank)] for s in range(start, end)]
    return DataLoader(crops, batch_sampler=batches, num_workers=int(dc.get("workers", 0)),
                      persistent_workers=False, pin_memory=proc.device.type == "cuda")


def _optimise(state: _State, batch: dict, loss_fn, optim: dict, device: torch.device) -> tuple[float, float]:
    """One optimiser step on ``batch``; returns (loss, learning rate)."""
    x, y, m = (batch[k].to(device, non_blocking=True) for k in ("input", "target", "mask"))
    x = x.contiguous(memory_format=state.memory_format)
    lr = learning_rate(optim, state.step)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.use_amp):
        pred = state.net(x)
    loss = loss_fn(pred.float(), y, m)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if float(optim.get("grad_clip", 0)) > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), float(optim["grad_clip"]))
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.step += 1
    return float(loss.detach()), lr


def _validation_tiles(data: dict) -> EvalTiles | None:
    """The fixed validation tiles: ``val_root``'s val (else test) split when given, else the
    dataset's own; None (validation off, said in one line) when a dataset folder has neither."""
    if data["kind"] == "dataset" and not data.get("val_root") and \
            not DatasetFolder.read(data["root"]).split(("val", "test")):
        log.warning("%s has no val or test pairs: training without validation (give --val-data DATASET to "
                    "validate on another folder)", data["root"])
        return None
    return EvalTiles(open_source(data, "val"), data.get("eval_tile"))


def _stop_requested(stop: "_Stop", world: int) -> bool:
    """Whether any process was asked to stop (SIGTERM / Ctrl-C), agreed across DDP ranks."""
    flag = torch.tensor([1.0 if stop.requested else 0.0])
    if world > 1:
        dist.all_reduce(flag)
    return flag.item() > 0


class _RunLog:
    """What a run writes as it trains (rank 0 only; other ranks only meet at the barrier):
    ``config.json``, ``metrics.csv`` (a row every ``log_every`` steps and at every
    validation), ``checkpoints/last.pt`` and ``curve.png``.  val_psnr / val_ssim: the
    latest validation (None before the first)."""

    def __init__(self, out: Path, config: dict, proc: _Process, state: _State, start: int,
                 val_tiles: EvalTiles | None) -> None:
        self.out, self.config, self.proc, self.state, self.val_tiles = out, config, proc, state, val_tiles
        self.last, self.metrics_path = out / "checkpoints" / "last.pt", out / "metrics.csv"
        self.total, self.tc = int(config["optim"]["steps"]), config["train"]
        self.rows: list[dict] = []
        self.val_psnr: float | None = None
        self.val_ssim: float | None = None
        if proc.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", config, indent=2)
            self.rows = _read_metrics(self.metrics_path, start)

    def after_step(self, loss_value: float, lr: float, bar: tqdm) -> None:
        """Log the step just taken, validating when it is due."""
        step, tc = self.state.step, self.tc
        if self.proc.rank != 0:
            return
        row = {"step": step, "loss": f"{loss_value:.6g}", "lr": f"{lr:.6g}",
               "elapsed_s": f"{self.state.elapsed:.2f}", "val_psnr": "", "val_ssim": ""}
        evaluate_now = self.val_tiles is not None and (step % int(tc["eval_every"]) == 0 or step == self.total)
        if evaluate_now:
            self.val_psnr, self.val_ssim = validate(self.state.model, self.val_tiles, self.proc.device)
            row["val_psnr"], row["val_ssim"] = f"{self.val_psnr:.4f}", f"{self.val_ssim:.4f}"
            bar.write(f"step {step}: loss {loss_value:.4f}, val PSNR {self.val_psnr:.2f} dB, SSIM {self.val_ssim:.4f}")
        if evaluate_now or step % int(tc["log_every"]) == 0:
            self.rows.append(row)

    def save(self) -> None:
        """Checkpoint, metrics and curve (rank 0), then every rank meets."""
        state = self.state
        if self.proc.rank == 0:
            _atomic_save({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                          "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
                          "step": state.step, "elapsed_s": state.elapsed, "config": self.config,
                          "params": models.count_parameters(state.model)}, self.last)
            _write_metrics(self.metrics_path, self.rows)
            plot_curves(self.metrics_path, self.out / "curve.png")
        if self.proc.world > 1:
            dist.barrier()


def train(config: dict, out: Path | str, init_from: Path | str | None = None, progress: bool = True,
          stop_at: int | None = None) -> dict:
    """Train (or resume) the run in folder ``out`` and return a summary dict.

    Args:
        config: a config from :func:`load_config`. When ``out`` already holds a
            checkpoint, the run resumes from it with the stored config (only
            ``optim.steps`` may be raised to train longer).
        init_from: a checkpoint whose model weights start a new run (fine-tuning
            for a new phone); ignored when resuming.
        stop_at: stop (with a checkpoint) after this global step, as an interruption would.

    Returns ``{"step", "elapsed_s", "loss", "val_psnr", "val_ssim", "params", "stopped"}``.
    """
    out, proc = Path(out), _start_process()
    config, resume = _open_run(config, out, proc.rank)
    if proc.world > 1:
        dist.barrier()  # every rank has looked at the folder before rank 0 writes into it
    tc, dc, oc = config["train"], config["data"], config["optim"]
    if tc.get("threads"):
        torch.set_num_threads(int(tc["threads"]))
    train_src = open_source(dc, "train")
    kwargs = config["model"].setdefault("kwargs", {})
    if not getattr(train_src, "bayer", True) and "in_channels" not in kwargs:
        kwargs.update(in_channels=3, upscale=1)  # RGB inputs (a phone's JPEG): the RGB variant of the model
    state = _build_state(config, proc, resume, init_from)
    start, total = state.step, int(oc["steps"])
    end = min(total, stop_at) if stop_at is not None else total
    loader = _train_loader(config, train_src, proc, start, end)
    loss_fn = build_loss(config["loss"])
    val_tiles = _validation_tiles(dc) if proc.rank == 0 else None
    log_book = _RunLog(out, config, proc, state, start, val_tiles)
    loss_value, stopped = float("nan"), False
    bar = tqdm(total=end, initial=start, disable=not progress or proc.rank != 0,
               desc=f"train {config['model']['name']}", unit="step", dynamic_ncols=True)
    state.net.train()
    with _Stop() as stop:
        t_last = time.perf_counter()
        for batch in loader:
            loss_value, lr = _optimise(state, batch, loss_fn, oc, proc.device)
            state.elapsed += time.perf_counter() - t_last
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            log_book.after_step(loss_value, lr, bar)
            t_last = time.perf_counter()  # validation and logging time is not training time
            stopped = _stop_requested(stop, proc.world)
            if stopped or state.step % int(tc["ckpt_every"]) == 0 or state.step == end:
                log_book.save()
            if stopped:
                log.warning("interrupted: checkpoint saved at step %d; run the same command again to resume",
                            state.step)
                break
    bar.close()
    if state.step == start and proc.rank == 0 and not log_book.last.is_file():
        log_book.save()
    val_psnr, val_ssim = log_book.val_psnr, log_book.val_ssim
    return {"step": state.step, "elapsed_s": state.elapsed, "loss": loss_value, "val_psnr": val_psnr,
            "val_ssim": val_ssim, "params": models.count_parameters(state.model),
            "stopped": stopped or state.step < total}


def main_torchrun() -> None:  # pragma: no cover - entry for `torchrun -m learn.train CONFIG OUT`
    """``python -m learn.train CONFIG OUT [STEPS]``: the same training under torchrun."""
    import sys

    cfg = load_config(sys.argv[1])
    if len(sys.argv) > 3:
        cfg["optim"]["steps"] = int(sys.argv[3])
    train(cfg, sys.argv[2])
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    main_torchrun()
