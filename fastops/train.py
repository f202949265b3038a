"""``python -m fastops train``: trains a tutorial model the way its course does (RECIPES: loss,
optimiser, learning rate, batch size, epochs, data), on torch.nn layers, on fastops layers, or
both from the same initial weights and the same data order, to compare them.

    train(Options(model="cifar_net", impl="both")) -> {impl: Result}

Both builds train in turns, a block of steps (a tenth of an epoch) at a time, which goes first
alternating from one pair of blocks to the next, each with its own RNG state, so each trains
exactly as it would alone. Their speed ratio is the median, with quartiles and range, over the
pairs of blocks after each build's first (its warm-up): neither build pays the process's
warm-up nor always runs after the other.

Each epoch shows a tqdm bar (loss, accuracy, time and samples/s so far) in a terminal and ends
with a line giving the test accuracy (the test MSE for regressions) and the epoch's time and
samples/s, timed the same way (training steps only). Under ``torchrun --nproc_per_node=P`` the
same code trains data-parallel: one process per CPU (gloo) or GPU (NCCL),
DistributedDataParallel, each process a 1/P share of every epoch (DistributedSampler); the batch
size is per process, and only the main process prints (errors aside).

Ctrl-C (SIGINT; torchrun passes it on to its workers) or SIGTERM (what schedulers send) stops
at the next step boundary, where model, optimiser and RNG state are consistent, and saves a
checkpoint; ``resume=True`` continues from that very step, so an interrupted and resumed run
trains exactly as an uninterrupted one. A checkpoint is also saved after every epoch.

Over 500 lines on purpose: one command (arguments, recipes, the loop, checkpoints, the
comparison report) whose parts only this command uses.
"""

import dataclasses
import os
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from . import data
from ._extras import require
from .convert import convert
from .models import IMPLS, NAMES, RECIPES, build

# Checked before importing them, so that a missing one is named with its pip extra.
require("models", "fastops.train")
from tqdm import tqdm  # noqa: E402

INTERRUPTED = 130  # exit status of a run stopped by a signal (128 + SIGINT), as shells report it
IMPL_CHOICES = IMPLS + ("both",)
_EVAL_BATCH_SIZE = 256  # evaluation only: no effect on the results
_STOP_POLL_STEPS = 10  # data-parallel processes agree on a stop request every this many steps
_POSTFIX_SECONDS = 0.5  # refresh of the bar's loss/accuracy/rate (reading them waits for the GPU)
# no tqdm elapsed time or rate: they would count the other build's turns; the postfix has ours
_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}"  # ", " postfix
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_BLOCKS_PER_EPOCH = 10  # an epoch's steps are timed in this many blocks, the builds taking turns
_LOG_AXIS_SPAN = 100  # max / min of the losses from which their plot's y axis is logarithmic


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``python -m fastops train`` is asked (None: the recipe's / the default)."""

    model: str
    impl: str = "torch"  # "torch" | "fastops" | "both"
    data: str | None = None  # folder (or CSV) of the real data set; None: built-in default
    epochs: int | None = None
    device: str | None = None  # "cpu" | "cuda"; None: cuda where present
    seed: int = 0
    batch_size: int | None = None  # per process
    limit: int | None = None  # use only the first `limit` training and test samples
    out: str | None = None  # checkpoints and plot; None: runs/<model>
    resume: bool = False
    sync_bn: bool = False


@dataclasses.dataclass(frozen=True)
class Block:
    """Steps of one build timed together (forward, backward, optimiser step; not evaluation or
    checkpoints): the epoch and step they start at, how many, the samples of all processes and
    this process's seconds. The first block a build trains in a process is its warm-up."""

    epoch: int
    first_step: int
    steps: int
    samples: int
    seconds: float
    warm_up: bool


@dataclasses.dataclass
class Result:
    """One build's training: the trained model (not DDP-wrapped), the loss of every step (this
    process's batch), one record per finished epoch (train_loss, train_metric, test_loss,
    test_metric, seconds, samples), whether a signal stopped it, and the Blocks it trained in
    this process (in order; a resumed run's earlier blocks are not among them)."""

    impl: str
    model: nn.Module
    step_losses: list
    epochs: list
    interrupted: bool
    blocks: list = dataclasses.field(default_factory=list)

    def samples_per_second(self):
        seconds = sum(record["seconds"] for record in self.epochs)
        return sum(record["samples"] for record in self.epochs) / seconds if seconds else 0.0


@dataclasses.dataclass(frozen=True)
class _Processes:
    """This process's place in a data-parallel run (rank 0 of 1 when run alone)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self):
        return self.rank == 0


class _StopRequest:
    """Turns the first SIGINT/SIGTERM into a request the training loop honours at the next
    step boundary; a second signal stops at once (KeyboardInterrupt), without a checkpoint.
    ``announce``: say so (the main process; under torchrun every process gets the signal)."""

    def __init__(self, announce=True):
        self.requested = False
        self._announce = announce
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._announce:
            print(f"\n{signal.Signals(signum).name}: stopping after this step to save a "
                  "checkpoint (a second Ctrl-C stops at once, without one)", file=sys.stderr,
                  flush=True)


class _Totals:
    """Sums over an epoch's batches on this process, kept on the device so that training never
    waits for the GPU to report a number."""

    def __init__(self, device, sums=(0.0, 0.0, 0.0)):
        self.loss_sum, self.correct, self.count = (torch.tensor(value, dtype=torch.float64,
                                                                device=device) for value in sums)

    def add(self, loss, count, correct=None):
        self.loss_sum += loss.detach() * count
        if correct is not None:
            self.correct += correct
        self.count += count

    def local(self):
        return [self.loss_sum.item(), self.correct.item(), self.count.item()]

    def reduced(self, processes):
        """(mean loss, accuracy, samples) over every process's batches."""
        sums = torch.stack([self.loss_sum, self.correct, self.count])
        if processes.world_size > 1:
            dist.all_reduce(sums)
        loss_sum, correct, count = sums.tolist()
        return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def _correct(loss_kind, outputs, targets):
    """Correct predictions in a batch: outputs [B, 1] probabilities vs targets [B, 1] in {0, 1}
    (bce), outputs [B, C] logits vs targets [B] class indices (cross entropy); None for MSE."""
    if loss_kind == "mse":
        return None
    if loss_kind == "bce":
        return ((outputs > 0.5) == (targets > 0.5)).sum()
    return (outputs.argmax(1) == targets).sum()


def _metric(loss_kind, mean_loss, accuracy):
    """What a model is judged by: the MSE for regressions, else the accuracy."""
    return mean_loss if loss_kind == "mse" else accuracy


def _metric_text(loss_kind, value):
    return f"MSE {value:.4g}" if loss_kind == "mse" else f"accuracy {100 * value:.2f}%"


def _batches(dataset, indices, batch_size, device):
    """(inputs, targets) on ``device``, ``batch_size`` samples of ``dataset[indices]`` at a
    time in that order. The sampler hands whole index lists to the TensorDataset: one gather
    per batch instead of one fetch per sample and a collate."""
    # Its own generator: a DataLoader otherwise draws a worker seed from the global RNG at
    # every iteration start, and a run resumed mid-epoch would then see other dropout masks.
    loader = DataLoader(dataset, sampler=BatchSampler(indices, batch_size, drop_last=False),
                        batch_size=None, pin_memory=device.type == "cuda",
                        generator=torch.Generator())
    for inputs, targets in loader:
        yield inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _epoch_order(dataset, processes, seed, epoch):
    """This process's share of the epoch's shuffled sample order: DistributedSampler's, so that
    P processes with batch B see together what one process with batch P*B sees."""
    sampler = DistributedSampler(dataset, num_replicas=processes.world_size, rank=processes.rank,
                                 shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


@torch.no_grad()
def _evaluate(model, loss_fn, loss_kind, dataset, processes):
    """(mean loss, accuracy) over the whole test set, each process scoring every P-th sample."""
    model.eval()
    totals = _Totals(processes.device)
    indices = list(range(processes.rank, len(dataset), processes.world_size))
    for inputs, targets in _batches(dataset, indices, _EVAL_BATCH_SIZE, processes.device):
        outputs = model(inputs)
        totals.add(loss_fn(outputs, targets), len(targets), _correct(loss_kind, outputs, targets))
    model.train()
    mean_loss, accuracy, _ = totals.reduced(processes)
    return mean_loss, accuracy


def _build(name, impl, sync_bn, model_kwargs):
    """build(name, impl); with ``sync_bn`` the BatchNorm layers become SyncBatchNorm before the
    fastops conversion (which then leaves them, and the ReLU after them, as they are)."""
    if not sync_bn:
        return build(name, impl, **model_kwargs)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build(name, "torch", **model_kwargs))
    return convert(model, fuse=True, inplace=True, verbose=False) if impl == "fastops" else model


def _rng_state(device):
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state, device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Run:
    """Training of one build (impl): model, optimiser, where it stands (epoch, step within the
    epoch), its RNG state (dropout masks), its timed blocks and its checkpoint."""

    def __init__(self, impl, options, config, path, processes, initial_state, model_kwargs):
        self.impl, self.options, self.config, self.processes = impl, options, config, processes
        self.recipe = RECIPES[options.model]
        self.model = _build(options.model, impl, options.sync_bn, model_kwargs)
        self.model.load_state_dict(initial_state)
        self.model.to(processes.device)
        self.optimizer = self.recipe.make_optimizer(self.model.parameters())
        self.loss_fn = self.recipe.make_loss(impl)
        self.path = path
        self.epoch, self.step = 0, 0  # the next batch to train
        self.step_losses, self.epoch_records = [], []
        self.epoch_seconds = 0.0  # spent so far in the unfinished epoch
        self.totals = _Totals(processes.device)
        self.blocks = []
        self._block_start, self._block_samples = None, 0  # (time, step) of the open block
        if options.resume and os.path.exists(self.path):
            self._restore()
        else:
            torch.manual_seed(options.seed + processes.rank)  # dropout differs across processes
            self.rng = _rng_state(processes.device)

    def _restore(self):
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        changed = [f"{key}={checkpoint['config'].get(key)!r} (now {value!r})"
                   for key, value in self.config.items() if checkpoint["config"].get(key) != value]
        if changed:
            raise ValueError(f"--resume: {self.path} was written with {', '.join(changed)}; the "
                             "model and the data order depend on these, so resume with the same "
                             "options (or leave out --resume to start afresh)")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.step_losses, self.epoch_records = checkpoint["step_losses"], checkpoint["epochs"]
        self.epoch_seconds = checkpoint["epoch_seconds"]
        mine = checkpoint["processes"][self.processes.rank]
        self.totals = _Totals(self.processes.device, mine["totals"])
        self.rng = mine["rng"]
        if self.processes.main:
            print(f"{self.impl}: resuming {self.path} at epoch {self.epoch + 1}, step {self.step}")

    def save(self, pending_losses):
        """Writes the checkpoint (rank 0; every process contributes its RNG state and sums)."""
        self.step_losses += torch.stack(pending_losses).tolist() if pending_losses else []
        pending_losses.clear()
        mine = {"rng": _rng_state(self.processes.device), "totals": self.totals.local()}
        everyone = [mine]
        if self.processes.world_size > 1:
            everyone = [None] * self.processes.world_size
            dist.all_gather_object(everyone, mine)
        if not self.processes.main:
            return
        checkpoint = {"config": self.config, "model": self.model.state_dict(),
                      "optimizer": self.optimizer.state_dict(), "epoch": self.epoch,
                      "step": self.step, "step_losses": self.step_losses,
                      "epochs": self.epoch_records, "epoch_seconds": self.epoch_seconds,
                      "processes": everyone}
        partial = self.path + ".partial"  # a kill while writing must not destroy the last one
        torch.save(checkpoint, partial)
        os.replace(partial, self.path)

    def _stop_agreed(self, stop, force=False):
        """Whether to stop now: in a data-parallel run every process must stop at the same
        step, so they compare their requests every few steps (and when ``force``)."""
        if self.processes.world_size == 1:
            return stop.requested
        if not force and self.step % _STOP_POLL_STEPS:
            return False
        flag = torch.tensor([float(stop.requested)], device=self.processes.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def train(self, train_set, test_set, epochs, batch_size, stop):
        """A generator that trains up to ``epochs`` epochs, pausing (yield) after every block of
        steps to let the other build train one (see _take_turns); returns the Result
        (interrupted if a stop came)."""
        processes, loss_kind = self.processes, self.recipe.loss
        network = self.model
        if processes.world_size > 1:
            device_ids = [processes.device] if processes.device.type == "cuda" else None
            network = DistributedDataParallel(self.model, device_ids=device_ids)
        _set_rng_state(self.rng, processes.device)
        while self.epoch < epochs:
            order = _epoch_order(train_set, processes, self.options.seed, self.epoch)
            steps = -(-len(order) // batch_size)  # the last batch may be short
            block_steps = -(-steps // _BLOCKS_PER_EPOCH)
            # disable=None: no bar where stderr is no terminal (a log gets the epoch lines)
            bar = tqdm(total=len(order) * processes.world_size, unit_scale=True,
                       desc=f"{self.impl} epoch {self.epoch + 1}/{epochs}", leave=False,
                       disable=None if processes.main else True, dynamic_ncols=True,
                       bar_format=_BAR_FORMAT,
                       initial=min(self.step * batch_size, len(order)) * processes.world_size)
            pending_losses, last_postfix = [], time.monotonic()
            for inputs, targets in _batches(train_set, order[self.step * batch_size:], batch_size,
                                            processes.device):
                if self._block_start is None:  # a stop may have come during the other's turn
                    if self._stop_agreed(stop, force=True):
                        bar.close()
                        return self._interrupted(pending_losses)
                    self._start_block()
                outputs = network(inputs)
                loss = self.loss_fn(outputs, targets)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                self.totals.add(loss, len(targets), _correct(loss_kind, outputs, targets))
                pending_losses.append(loss.detach())
                self._block_samples += len(targets) * processes.world_size
                bar.update(len(targets) * processes.world_size)
                if not bar.disable and time.monotonic() - last_postfix > _POSTFIX_SECONDS:
                    bar.set_postfix_str(self._running_text(), refresh=False)
                    last_postfix = time.monotonic()
                if self._stop_agreed(stop):
                    self._end_block()
                    bar.close()
                    return self._interrupted(pending_losses)
                if self.step % block_steps == 0 or self.step == steps:
                    self._end_block()
                    yield from self._pause()
            if not bar.disable:  # the bar's last state: the numbers of the epoch line
                bar.set_postfix_str(self._running_text())
            bar.close()
            self._finish_epoch(test_set, epochs)
            self.save(pending_losses)
        return self._result(interrupted=False)

    def _start_block(self):
        self._block_start, self._block_samples = (time.perf_counter(), self.step), 0

    def _end_block(self):
        """Times the steps since _start_block as a Block, and adds them to the epoch's time."""
        if self.processes.device.type == "cuda":
            torch.cuda.synchronize(self.processes.device)
        started, first_step = self._block_start
        seconds = time.perf_counter() - started
        self.epoch_seconds += seconds
        self.blocks.append(Block(self.epoch, first_step, self.step - first_step,
                                 self._block_samples, seconds, warm_up=not self.blocks))
        self._block_start = None

    def _pause(self):
        """Yields to the other build, keeping this build's RNG state (its dropout masks) apart
        from the other's, as if each had trained alone."""
        self.rng = _rng_state(self.processes.device)
        yield
        _set_rng_state(self.rng, self.processes.device)

    def _result(self, interrupted):
        return Result(self.impl, self.model, self.step_losses, self.epoch_records, interrupted,
                      self.blocks)

    def _running_text(self):
        """The bar's postfix: this process's running loss (and accuracy), and the epoch's time
        and rate so far, timed as the epoch line's."""
        count = max(self.totals.count.item(), 1)
        text = f"loss {self.totals.loss_sum.item() / count:.4f}"
        if self.recipe.loss != "mse":
            text += f", acc {100 * self.totals.correct.item() / count:.1f}%"
        seconds = self.epoch_seconds
        if self._block_start is not None:
            seconds += time.perf_counter() - self._block_start[0]
        return f"{text}, {_rate_text(count * self.processes.world_size, seconds)}"

    def _finish_epoch(self, test_set, epochs):
        """Scores the epoch, prints its line, and moves on to the next epoch."""
        loss_kind = self.recipe.loss
        train_loss, train_accuracy, samples = self.totals.reduced(self.processes)
        test_loss, test_accuracy = _evaluate(self.model, self.loss_fn, loss_kind, test_set,
                                             self.processes)
        train_metric = _metric(loss_kind, train_loss, train_accuracy)
        test_metric = _metric(loss_kind, test_loss, test_accuracy)
        record = {"train_loss": train_loss, "train_metric": train_metric, "test_loss": test_loss,
                  "test_metric": test_metric, "seconds": self.epoch_seconds, "samples": samples}
        self.epoch_records.append(record)
        if self.processes.main:
            tqdm.write(f"{self.impl} epoch {self.epoch + 1}/{epochs}: train loss {train_loss:.4g}"
                       f", {_metric_text(loss_kind, train_metric)} | test loss {test_loss:.4g}, "
                       f"{_metric_text(loss_kind, test_metric)} | "
                       f"{_rate_text(samples, self.epoch_seconds)}")
        self.epoch, self.step, self.epoch_seconds = self.epoch + 1, 0, 0.0
        self.totals = _Totals(self.processes.device)

    def _interrupted(self, pending_losses):
        self.save(pending_losses)
        if self.processes.main:
            print(f"{self.impl}: stopped at epoch {self.epoch + 1}, step {self.step}; checkpoint "
                  f"{self.path} (continue with --resume)", flush=True)
        return self._result(interrupted=True)


def _rate_text(samples, seconds):
    return f"{seconds:.2f} s, {samples / seconds:,.0f} samples/s"


def _resolve_device(requested):
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here")
    return requested


def _start_processes(device_type, world_size):
    """Joins the data-parallel run torchrun started (world_size > 1; the rendezvous comes
    from the environment): gloo on CPU, NCCL on CUDA with one GPU per process (LOCAL_RANK)."""
    if world_size == 1:
        return _Processes(0, 1, torch.device(device_type))
    if device_type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return _Processes(dist.get_rank(), world_size, device)


def _check_options(options):
    if options.model not in NAMES:
        raise ValueError(f"--model: unknown model {options.model!r}; expected one of {list(NAMES)}")
    if options.impl not in IMPL_CHOICES:
        raise ValueError(f"--impl must be one of {list(IMPL_CHOICES)}, got {options.impl!r}")
    for name in ("epochs", "batch_size", "limit"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _check_sync_bn(options, reference_model, device_type, world_size):
    if not any(isinstance(module, _BATCH_NORMS) for module in reference_model.modules()):
        raise ValueError(f"--sync-bn: {options.model} has no BatchNorm layer to synchronise")
    if device_type == "cpu" and world_size > 1:
        raise ValueError("--sync-bn needs CUDA: torch's SyncBatchNorm synchronises only GPU "
                         "(CUDA/XPU) tensors and raises on CPU ones in a multi-process run; on "
                         "CPU leave out --sync-bn (each process then normalises with the "
                         "statistics of its own batch)")


def _first(dataset, limit):
    return dataset if limit is None else TensorDataset(*(t[:limit] for t in dataset.tensors))


def _limit_text(limit, splits):
    """What --limit leaves of each split ({name: (whole, kept)}), counted: a split may hold
    fewer samples than the limit."""
    counts = ", ".join(f"all {len(whole)} {name} samples" if len(used) == len(whole)
                       else f"the first {len(used)} of {len(whole)} {name} samples"
                       for name, (whole, used) in splits.items())
    return f" (--limit {limit}: {counts})"


def train(options):
    """Trains ``options.model`` as :class:`Options` says; returns {impl: Result}. Raises
    ValueError / FileNotFoundError for bad options or data, naming the option or file."""
    _check_options(options)
    recipe = RECIPES[options.model]
    epochs = options.epochs or recipe.epochs
    batch_size = options.batch_size or recipe.batch_size
    device_type = _resolve_device(options.device)
    impls = IMPLS if options.impl == "both" else (options.impl,)
    out = options.out or os.path.join("runs", options.model)
    checkpoints = {impl: os.path.join(out, f"{options.model}-{impl}.pt") for impl in impls}
    if options.resume and not any(os.path.exists(path) for path in checkpoints.values()):
        raise FileNotFoundError(f"--resume: no checkpoint {options.model}-<impl>.pt for --impl "
                                f"{options.impl} in {out} (an earlier run with the same --out "
                                "writes it)")

    whole_train, whole_test, description = data.load(recipe.data, options.data)
    train_set, test_set = _first(whole_train, options.limit), _first(whole_test, options.limit)
    if options.limit:
        description += _limit_text(options.limit, {"train": (whole_train, train_set),
                                                   "test": (whole_test, test_set)})
    model_kwargs = ({"in_features": train_set.tensors[0].shape[1]}
                    if options.model == "multi_feature_logistic" else {})  # the table's width
    torch.manual_seed(options.seed)  # the same initial weights for every build and process
    reference_model = build(options.model, "torch", **model_kwargs)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun
    if options.sync_bn:
        _check_sync_bn(options, reference_model, device_type, world_size)

    processes = _start_processes(device_type, world_size)
    try:
        if processes.main:
            os.makedirs(out, exist_ok=True)
            print(f"{options.model}: {recipe.loss} loss, {recipe.optimizer} lr {recipe.lr}, "
                  f"batch {batch_size}" + (f" x {processes.world_size} processes"
                                           if processes.world_size > 1 else "")
                  + f", {epochs} epochs on {processes.device}\ndata: {description}", flush=True)
        # what the model and the data order depend on: a resumed run must have the same
        config = {"model": options.model, "seed": options.seed, "batch_size": batch_size,
                  "world_size": processes.world_size, "limit": options.limit,
                  "data": options.data, "sync_bn": options.sync_bn}
        runs = [_Run(impl, options, dict(config, impl=impl), checkpoints[impl], processes,
                     reference_model.state_dict(), model_kwargs) for impl in impls]
        with _StopRequest(announce=processes.main) as stop:
            results = _take_turns([run.train(train_set, test_set, epochs, batch_size, stop)
                                   for run in runs])
        if any(result.interrupted for result in results.values()):
            return results
        if processes.main:
            for result in results.values():
                text = _metric_text(recipe.loss, result.epochs[-1]["test_metric"])
                print(f"{result.impl}: test {text} after epoch {len(result.epochs)}, "
                      f"{result.samples_per_second():,.0f} samples/s")
            if len(results) == 2:
                print(_compare(options.model, recipe.loss, results, out))
        return results
    finally:
        if processes.world_size > 1:
            dist.destroy_process_group()


def _loss_figure(name, loss_kind, results):
    """Both builds' loss curves, step by step and smoothed, on one matplotlib Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    # dashed second curve: where the builds agree it lies on the first and both stay visible
    for result, line_style in zip(results.values(), ("-", "--"), strict=True):
        losses = np.asarray(result.step_losses)
        steps = np.arange(1, len(losses) + 1)
        raw = axes.plot(steps, losses, linewidth=0.5, alpha=0.3)[0]
        # a moving average over 1% of the run: per-step losses of small batches are noise
        window = max(1, len(losses) // 100)
        smooth = np.convolve(losses, np.full(window, 1.0 / window), mode="valid")
        label = result.impl + (f" (mean of {window} steps)" if window > 1 else "")
        axes.plot(steps[window - 1:], smooth, color=raw.get_color(), linestyle=line_style,
                  linewidth=1.5, label=label)
    _loss_axis(axes, [loss for result in results.values() for loss in result.step_losses])
    axes.set(xlabel="step", ylabel=f"training loss ({loss_kind})",
             title=f"{name}: torch.nn vs fastops, same initial weights and data order")
    axes.legend()
    return figure


def _loss_axis(axes, losses):
    """A log y axis where the losses span two decades or more, its decades labelled as plain
    numbers (0.01, 0.1, 1) rather than powers of ten; a linear one over a narrower range, where
    a log axis has at most one decade to label and labels the rest 2.28x10^0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    low, high = min(losses), max(losses)
    if low > 0 and high / low >= _LOG_AXIS_SPAN:
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(FuncFormatter("{:g}".format))
        axes.yaxis.set_minor_formatter(NullFormatter())


def _take_turns(trainings):
    """Runs the builds' training generators (_Run.train) a block each in turn until all are
    done; {impl: Result}. Which build goes first alternates from one round to the next, so
    that neither is always the one to start after the other (a cache the other filled, a
    frequency it raised)."""
    results, turn = [None] * len(trainings), list(range(len(trainings)))
    while turn:
        for index in list(turn):
            try:
                next(trainings[index])
            except StopIteration as finished:
                results[index] = finished.value
                turn.remove(index)
        turn.reverse()
    return {result.impl: result for result in results}


def _compare(name, loss_kind, results, out):
    """Plots both builds' loss curves to <out>/<name>-loss.png; returns the summary lines."""
    plot_path = os.path.join(out, f"{name}-loss.png")
    _loss_figure(name, loss_kind, results).savefig(plot_path, dpi=120)

    metrics = ", ".join(f"{impl} {_metric_text(loss_kind, result.epochs[-1]['test_metric'])}"
                        for impl, result in results.items())
    return (f"summary {name}: test {metrics}; loss curves {plot_path}\n"
            + _speed_text(results["torch"].blocks, results["fastops"].blocks))


def _speed_text(torch_blocks, fastops_blocks):
    """The fastops/torch speed ratio, its median and spread over the pairs of blocks of the
    same steps that both builds trained after their warm-up, and what was timed."""
    timed = {(block.epoch, block.first_step): block for block in torch_blocks if not block.warm_up}
    pairs = [(timed[key], block) for block in fastops_blocks
             if (key := (block.epoch, block.first_step)) in timed and not block.warm_up]
    if not pairs:
        return ("speed fastops/torch: not measured (each build's first block of steps is its "
                "warm-up and no other block was trained; train more steps)")
    samples, seconds = (np.array([[getattr(block, field) for block in pair] for pair in pairs])
                        for field in ("samples", "seconds"))
    ratios = (samples[:, 1] / seconds[:, 1]) / (samples[:, 0] / seconds[:, 0])
    low_quartile, median, high_quartile = np.percentile(ratios, [25, 50, 75])
    torch_speed, fastops_speed = samples.sum(axis=0) / seconds.sum(axis=0)
    steps = max(block.steps for pair in pairs for block in pair)
    return (f"speed fastops/torch: {median:.2f}x median over {len(pairs)} block pairs, quartiles "
            f"{low_quartile:.2f}x-{high_quartile:.2f}x, range {ratios.min():.2f}x-"
            f"{ratios.max():.2f}x (torch {torch_speed:,.0f}, fastops {fastops_speed:,.0f} "
            f"samples/s over those blocks); timed: training steps (forward, backward, optimiser "
            f"step) in blocks of {steps} step{'s' if steps > 1 else ''}, the builds taking turns "
            "and the first of each pair alternating, after one untimed warm-up block of each build")
