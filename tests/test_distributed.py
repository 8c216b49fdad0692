"""Distributed training with gloo on the CPU: two processes, averaged gradients, one run folder."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import CPU_CONFIG, FAST_TRAINING
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fieldseg.band_statistics import BandStatistics
from fieldseg.distributed import DistContext, init_distributed, process_group_backend
from fieldseg.errors import ConfigError
from fieldseg.models.base import ChipPrediction, FieldModel

CONFIG = CPU_CONFIG
FAST = [*FAST_TRAINING, "training.batch_size=2", "training.epochs=1"]


class ToyModel(FieldModel):
    """A one-weight family: predicts each chip's mean normalised value; squared error loss."""

    family = "toy"

    def __init__(self) -> None:
        stats = [BandStatistics(name="b", p2=-10, p98=10, mean=0, std=1, n_pixels=1)]
        super().__init__(["b"], stats, None)
        self.weight = nn.Parameter(torch.tensor([0.5]))

    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        values = torch.stack([self.weight[0] * image.mean() for image in self.normalise(images)])
        goals = torch.stack([t["goal"] for t in targets])
        return {"loss": ((values - goals) ** 2).mean()}

    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        raise NotImplementedError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _join(rank: int, world: int, port: int) -> DistContext:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    return init_distributed("cpu")  # gloo, also where a GPU is present


def _items() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return [(torch.full((1, 4, 4), 2.0), {"goal": torch.tensor(3.0)}),
            (torch.full((1, 4, 4), -1.0), {"goal": torch.tensor(1.0)})]  # fmt: skip


def _toy_step(rank: int, world: int, port: int, out: str) -> None:
    ctx = _join(rank, world, port)
    assert ctx.distributed and dist.get_backend() == "gloo"
    model = ToyModel()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    image, target = _items()[rank]  # each process sees different data
    loss = ddp([image], [target])["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    torch.save(model.weight.detach(), Path(out) / f"rank{rank}.pt")
    ctx.close()


def test_two_processes_average_their_gradients(tmp_path: Path) -> None:
    mp.spawn(_toy_step, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    first = torch.load(tmp_path / "rank0.pt")
    second = torch.load(tmp_path / "rank1.pt")
    assert torch.equal(first, second)
    # one process on the combined batch takes the same step
    model = ToyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    images, targets = zip(*_items(), strict=True)
    loss = model(list(images), list(targets))["loss"]
    loss.backward()
    optimizer.step()
    assert torch.allclose(first, model.weight.detach(), atol=1e-6)
    assert not torch.allclose(first, torch.tensor([0.5]))  # it did move


def _train_rank(rank: int, world: int, port: int, dataset: str, run_dir: str) -> None:
    from fieldseg.training import train

    _join(rank, world, port)
    summary = train(dataset, CONFIG, run_dir, overrides=FAST, device="cpu")
    assert summary.epochs_done == 1
    assert summary.is_main == (rank == 0)  # the CLI prints only the first process's summary


@pytest.mark.slow
def test_fieldseg_train_runs_in_two_gloo_processes(tmp_path: Path) -> None:
    from fieldseg.synthetic import synth
    from fieldseg.tiling import tile_scenes

    synth(tmp_path / "s.tif", tmp_path / "f.gpkg", size=128, seed=3, bands=4, dates=1)
    tile_scenes([tmp_path / "s.tif"], tmp_path / "f.gpkg", tmp_path / "ds", chip_size=64,
                overlap=0, split="0.75,0.25,0", block_size=64, seed=1)  # fmt: skip
    run_dir = tmp_path / "run"
    mp.spawn(_train_rank, args=(2, _free_port(), str(tmp_path / "ds"), str(run_dir)), nprocs=2,
             join=True)  # fmt: skip
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]  # written once, by rank 0
    assert {"best.pt", "last.pt", "config.yaml", "training_curves.png"} <= {
        p.name for p in run_dir.iterdir()
    }


def test_the_backend_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process_group_backend("auto") == process_group_backend("cuda") == "nccl"
    assert process_group_backend("cpu") == "gloo"  # --device cpu trains on CPUs with a GPU here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_group_backend("auto") == "gloo"


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"--nproc_per_node 1.*--device cpu"):
        init_distributed("auto")
    assert not dist.is_initialized()
