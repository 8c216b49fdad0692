"""Training past one device: DistributedDataParallel started by ``torchrun``.

``torchrun --nproc_per_node N -m fieldseg train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` then joins the process group (NCCL on GPUs, gloo on
CPUs) and every other process-dependent choice (device, sampler, who writes) reads the
:class:`DistContext`. Without those variables everything runs in one process, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fieldseg.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that logs, validates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op in one process)."""
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any of them."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def from_main(self, flag: bool) -> bool:
        """The main process's ``flag``, on every process."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        dist.broadcast(value, src=0)
        return bool(value.item() > 0)

    def close(self) -> None:
        """Leave the process group if this context joined it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the run's ``--device``: NCCL joins the GPUs unless it is ``cpu`` or no GPU is
            present, gloo the CPUs otherwise.

    Raises:
        ConfigError: NCCL would need more GPUs on this node than it has (torchrun started
            more processes per node than there are GPUs).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    owns = not dist.is_initialized()
    if owns:
        backend = process_group_backend(device)
        if backend == "nccl":
            gpus = torch.cuda.device_count()
            if local_rank >= gpus:
                raise ConfigError(
                    f"process {local_rank} of this node has no GPU of its own ({gpus} here): "
                    f"start at most {gpus} per node (torchrun --nproc_per_node {gpus}), or "
                    "train on the CPUs with --device cpu"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, owns_group=owns)


def process_group_backend(device: str = "auto") -> str:
    """``nccl`` where the run's processes take GPUs, ``gloo`` where they stay on the CPU."""
    return "nccl" if device != "cpu" and torch.cuda.is_available() else "gloo"


def _collective_device() -> torch.device:
    backend = dist.get_backend()
    return (
        torch.device("cuda", torch.cuda.current_device())
        if backend == "nccl"
        else torch.device("cpu")
    )
