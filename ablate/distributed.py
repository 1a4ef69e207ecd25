"""One run on several processes: torch.distributed data-parallel training of one variant at one seed.

A run started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT in the
environment) or by submitit with several tasks (the SLURM launcher's tasks_per_node > 1, or
submitit_local's) joins a process group (`init_from_env`); every process trains the same model on
its share of each global batch, DistributedDataParallel averages the gradients, and only the
primary process (rank 0) writes the record, the checkpoints and the index. Without such a launcher
nothing here does anything: one process, the numbers and code paths of a plain run.

What keeps the runs of several processes comparable to one process's:
- the global batch is data.batch_size, each process gets data.batch_size / world size of it, so the
  learning rate and schedule stay those of the config (`per_process_batch`);
- each epoch's shuffled order is the one-process loader's (the same torch.Generator seeded from
  train.epoch_seed); each global batch of it is cut into one contiguous share per process, as
  torch's DistributedSampler shares a whole epoch (`rank_loader`);
- the logged losses are the mean over processes of each process's loss, the loss whose gradient
  DDP's average descends (`step_values`).
What still differs from one process (which is why a run on N > 1 processes hashes N, train.py):
BatchNorm statistics are each process's (the sync_bn trick makes them the global batch's), a loss
normalised by its batch's positives (FCOS) is normalised by each process's, and with
data.flip_rng=global random flips are drawn per process (with sample, the default, an image's flip
depends on its index and the epoch only: the one-process run's).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserInputError

log = logging.getLogger("ablate.distributed")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process stands among those a launcher started for one run."""
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun" (any env:// launcher) or "submitit"


def launch_environment(environ: dict[str, str] | None = None) -> LaunchEnvironment | None:
    """The launcher's description of this process, or None when no launcher started several.

    torchrun exports the env:// variables itself. submitit (SLURM tasks, or submitit_local's)
    runs the task function once per task and sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID /
    SLURM_JOB_NODELIST (or its local equivalents); submitit.helpers.TorchDistributedEnvironment
    turns them into the same five values (master: the job's first host, port: drawn from the job
    id, so every task agrees), as its docstring shows for env:// initialisation."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnvironment(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                                 local_rank=int(env.get("LOCAL_RANK", 0)),
                                 master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                                 master_port=int(env.get("MASTER_PORT", 29500)), launcher="torchrun")
    if env.get("SUBMITIT_EXECUTOR") in ("slurm", "local"):
        from submitit.helpers import TorchDistributedEnvironment  # the launcher that set the variable has it

        te = TorchDistributedEnvironment()
        return LaunchEnvironment(rank=te.rank, world_size=te.world_size, local_rank=te.local_rank,
                                 master_addr=te.master_addr, master_port=int(te.master_port), launcher="submitit")
    return None


def backend_for(name: str, device: str) -> str:
    """runtime.distributed.backend: auto is NCCL for a run on CUDA, gloo on the CPU."""
    if name not in BACKENDS:
        raise UserInputError(f"runtime.distributed.backend={name!r}: choose one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if on_cuda else "gloo"


def init_from_env(cfg: Any) -> int:
    """Join the process group the launcher describes (once); the world size (1: no group).

    The run's config `cfg` gives the backend (runtime.distributed.backend; auto: by runtime.device)
    and how long a process waits for the others at a collective (runtime.distributed.timeout_min).
    On several processes the world size goes into the config as train.processes, hashed: such a
    run's numbers are not one process's (module docstring); a run in one process has no such key,
    so its hash is what it always was. The other ranks log warnings and errors only."""
    if not active():
        launch = launch_environment()
        if launch is None or launch.world_size <= 1:
            return 1
        runtime = cfg.runtime
        backend = backend_for(str(runtime.distributed.backend), str(runtime.device))
        if backend == "nccl":
            # One GPU per process: "cuda" (runtime.device=auto) then means this process's GPU.
            torch.cuda.set_device(launch.local_rank)
        dist.init_process_group(backend, init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
                                rank=launch.rank, world_size=launch.world_size,
                                timeout=dt.timedelta(minutes=float(runtime.distributed.timeout_min)))
        log.info("process %d of %d (%s, %s backend, master %s:%d)", launch.rank, launch.world_size,
                 launch.launcher, backend, launch.master_addr, launch.master_port)
    if world_size() > 1:
        if not is_primary():
            logging.getLogger("ablate").setLevel(logging.WARNING)
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.train.processes = world_size()
    return world_size()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_primary() -> bool:
    """Rank 0, the process that writes the record, the checkpoints and the index (also a lone process)."""
    return rank() == 0


def backend() -> str | None:
    return dist.get_backend() if active() else None


def barrier() -> None:
    """Every process waits here for the others (nothing to wait for in one process)."""
    if world_size() > 1:
        dist.barrier()


def from_primary(value: Any) -> Any:
    """Rank 0's `value` on every process (a picklable object); the value itself in one process."""
    if world_size() <= 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def describe() -> dict[str, Any] | None:
    """The record's `distributed`: world size and backend, None for a run in one process."""
    return {"world_size": world_size(), "backend": backend()} if world_size() > 1 else None


# ---------------------------------------------------------------- the global batch, shared


def per_process_batch(batch_size: int, processes: int) -> int:
    """data.batch_size is the global batch (the learning rate is set for it); each process takes
    an equal share, so it must divide."""
    if batch_size % processes:
        raise UserInputError(f"data.batch_size={batch_size} cannot be split evenly over {processes} processes: "
                             f"choose a multiple of {processes} (it is the global batch; each process trains on "
                             "data.batch_size / processes images per step)")
    return batch_size // processes


def share_of(batch: Sequence[int], rank: int, processes: int) -> list[int]:
    """Process `rank`'s contiguous share of one global batch of indices: equal shares (sizes one
    apart when the last batch of an epoch does not divide). A batch with fewer indices than
    processes is padded with its own first indices, as DistributedSampler pads an epoch, so
    that no process steps without data (DDP waits for every process's gradient)."""
    batch = list(batch)
    while len(batch) < processes:
        batch += batch[: processes - len(batch)]
    return [int(i) for i in np.array_split(np.asarray(batch), processes)[rank]]


class RankShare:
    """A batch sampler yielding one process's share of each batch of another batch sampler."""

    def __init__(self, global_batches, rank: int, processes: int):
        self.global_batches, self.rank, self.processes = global_batches, rank, processes

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches:
            yield share_of(batch, self.rank, self.processes)

    def __len__(self) -> int:
        return len(self.global_batches)


def rank_loader(dataset, batch_size: int, num_workers: int, seed: int, rank_: int | None = None,
                processes: int | None = None):
    """The training loader of this process for the epoch seeded by `seed`: the one-process loader
    (data.make_loader: its sampler drawing the epoch's order from a generator seeded with `seed`)
    with each global batch cut to this process's share. In one process, that loader itself."""
    from torch.utils.data import DataLoader

    from .data import make_loader

    rank_ = rank() if rank_ is None else rank_
    processes = world_size() if processes is None else processes
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=seed)
    if processes <= 1:
        return loader
    per_process_batch(batch_size, processes)
    # Same generator object: the loader draws its workers' base seed from it first, then the
    # sampler its permutation, exactly as the one-process loader does.
    return DataLoader(dataset, batch_sampler=RankShare(loader.batch_sampler, rank_, processes),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, generator=loader.generator,
                      pin_memory=loader.pin_memory, persistent_workers=loader.persistent_workers,
                      worker_init_fn=loader.worker_init_fn)


# ---------------------------------------------------------------- the model and the step


def wrap(model: torch.nn.Module, device: torch.device, settings: Any) -> torch.nn.Module:
    """The module the training loop calls: DistributedDataParallel over `model` with several
    processes (gradients averaged in backward), `model` itself in one. Checkpoints, tricks and
    evaluation keep using `model`, so parameter names are those of a one-process run."""
    if world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids,
                                   find_unused_parameters=bool(settings.find_unused_parameters))


def step_values(loss: torch.Tensor, parts: dict[str, torch.Tensor], images: int
                ) -> tuple[float, dict[str, float], int]:
    """The step's loss and loss parts as floats, averaged over the processes, and the images of
    the global batch (one all-reduce): the mean of the processes' losses is what DDP's averaged
    gradient descends, and a non-finite loss on one process is non-finite on all, so every
    process stops at the same step. In one process: the values themselves."""
    values = torch.stack([loss.detach().float(), *(v.detach().float() for v in parts.values())])
    if world_size() <= 1:
        total, *rest = values.tolist()
        return total, dict(zip(parts, rest)), images
    count = torch.tensor([float(images)], device=values.device)
    values = torch.cat([values, count])
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    *means, summed = values.tolist()
    total, *rest = (v / world_size() for v in means)
    return total, dict(zip(parts, rest)), int(round(summed))
