"""The pretraining loop: choose the base images, build the objective on the backbone, train through the runtime's
Accelerator, write the checkpoint directory (on the main process only).

Model, optimizer and DataLoader go through ``accelerator.prepare``, so the same loop runs data-parallel under
``accelerate launch`` / torchrun: ``--batch-size`` is one step's batch over all processes (each loads its share),
every process reads the processes' mean loss (all stop together at a NaN), and the checkpoint is written once
(:mod:`pefs.runtime.distributed`). Contrastive negatives are those of a process's share (no cross-process
gather); a meta-training step averages one episode per process. Precision and GPU settings come from
:mod:`pefs.runtime.hardware`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from pefs import backbones
from pefs.backbones import takes_img_size
from pefs.backbones.sources.checkpoint import is_pretrain_dir
from pefs.config import checks
from pefs.config.files import check_outside
from pefs.config.pretrain import PretrainConfig
from pefs.data import load_dataset
from pefs.data.fingerprint import data_fingerprint
from pefs.data.sources import DEFAULT_DATASET, local_path
from pefs.errors import PefsError
from pefs.pretrain import checkpoint
from pefs.pretrain.contrastive import Contrastive
from pefs.pretrain.data import base_pool, loader_for
from pefs.pretrain.mae import MaskedAutoencoder
from pefs.pretrain.protonet import ProtoNet
from pefs.pretrain.supervised import Supervised
from pefs.runtime import distributed, hardware

#: stage name -> the objective module trained in it
STAGES = {"supervised": Supervised, "contrastive": Contrastive, "mae": MaskedAutoencoder, "protonet": ProtoNet}
#: steps between loss checks (a host sync): printed with progress, and a NaN stops the run there
CHECK_EVERY = 10


def check_inputs(cfg: PretrainConfig) -> None:
    """Every refusal that needs no model or image: the settings, the output folder, the model name."""
    cfg.validate()
    check_outside(cfg.out, "--out", [(local_path(cfg.data), "data folder"), (cfg.checkpoint, "checkpoint files")])
    checkpoint.check_out(cfg.out)
    checks.check_writable_dir(cfg.out, "checkpoint folder", "--out")
    if cfg.model.startswith("hf:"):
        raise PefsError(f"pefs pretrain trains timm and offline models; {cfg.model} is a transformers model, which "
                        "pefs tune --checkpoint cannot load (train it with transformers and pass its directory as hf:)")
    backbones.check_name(cfg.model)
    backbones.check_weights(cfg.model, cfg.pretrained, cfg.checkpoint)
    if cfg.checkpoint is not None:
        backbones.check_checkpoint_path(cfg.checkpoint)


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run the configured pretraining and write ``cfg.out``; returns the identity written (also its JSON)."""
    check_inputs(cfg)
    dataset = load_dataset(cfg.data)
    pool = base_pool(dataset)
    size = cfg.img_size or dataset.suggested_img_size
    kwargs = {"img_size": size} if size and takes_img_size(cfg.model) else {}
    hardware.seed_everything(cfg.seed)
    bb = backbones.load(cfg.model, pretrained=cfg.pretrained, checkpoint=cfg.checkpoint, **kwargs)
    start = {"pretrained": cfg.pretrained, "source": bb.source,
             "checkpoint": (checkpoint.summary(cfg.checkpoint, checkpoint.verify(cfg.checkpoint))
                            if is_pretrain_dir(cfg.checkpoint) else cfg.checkpoint)}
    bb.reset_head(0)
    objective = STAGES[cfg.stage](bb, len(pool.images.classes), cfg)  # mae refuses a CNN here, before any image
    size = size or bb.input_size[-1]
    loader, steps = loader_for(objective, pool.images, cfg, size, bb.data_config,
                               hardware.decode_workers(cfg), hardware.pin_memory())
    began = time.perf_counter()
    losses = train(objective, loader, steps, cfg)
    identity = {
        "kind": "pefs pretrain", "model": cfg.model, "model_kwargs": kwargs, "img_size": size,
        "architecture": backbones.architecture(cfg.model),
        "params": bb.num_params(), "objective": cfg.stage, "start": start,
        "data": {"spec": cfg.data or DEFAULT_DATASET, "name": dataset.name, "fingerprint": data_fingerprint(cfg.data),
                 "split": pool.split, "note": pool.note, "classes": len(pool.images.classes),
                 "class_names": list(pool.images.classes), "images": len(pool.images)},
        "episodes": ({"ways": cfg.ways, "shots": cfg.shots, "queries": cfg.queries, "count": steps,
                      "classes_seen": loader.dataset.classes_seen()} if cfg.meta_train else None),
        "steps": steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seconds": round(time.perf_counter() - began, 2),
        "first_loss": losses[0], "final_loss": final_loss(losses), "losses": thin(losses),
        "config": cfg.to_dict(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if distributed.world_size() > 1:
        identity["processes"] = distributed.world_size()
    return distributed.on_main(lambda: checkpoint.save(bb.model, cfg.out, identity))  # written once


def train(objective: torch.nn.Module, loader, steps: int, cfg: PretrainConfig) -> list[float]:
    """``steps`` AdamW steps of ``objective`` over ``loader`` (again and again as needed); the loss per step."""
    acc = hardware.accelerator()
    hardware.configure_backends(cfg, acc.device)
    precision = hardware.training_precision(cfg, acc.device)
    for p in objective.parameters():  # every weight trains (a loaded model may arrive with some frozen)
        p.requires_grad_(True)
    opt = torch.optim.AdamW(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    model, opt, loader = acc.prepare(objective, opt, loader)
    model.train()
    done, pending, losses = 0, [], []
    while done < steps:
        for batch in loader:
            with hardware.autocast(acc.device, precision):
                loss = model(*batch)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            pending.append(distributed.mean(loss.detach().float()))  # every process reads the same loss
            done += 1
            if len(pending) == CHECK_EVERY or done == steps:
                losses += check_finite(pending, done, cfg)
                pending = []
            if done == steps:
                break
    acc.free_memory(model, opt, loader)
    return losses


def check_finite(pending: list[torch.Tensor], done: int, cfg: PretrainConfig) -> list[float]:
    """The losses of the last steps as floats (one host sync); a NaN or infinity stops the run."""
    values = torch.stack(pending).cpu().tolist()
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise PefsError(f"pretraining loss became {bad} by step {done}; lower the learning rate (--lr {cfg.lr}) or "
                        "use --mixed-precision no")
    if cfg.progress:
        print(f"step {done}: loss {sum(values) / len(values):.4f}", flush=True)
    return values


def warmup_cosine(steps: int):
    """Linear warmup over the first 5% of steps, then cosine decay to zero (a multiplier of the base rate)."""
    warm = max(1, steps // 20)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
    return factor


def final_loss(losses: list[float]) -> float:
    """The mean loss of the last tenth of the steps (at least one): the run's final loss, less noisy than one step."""
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def thin(losses: list[float], most: int = 200) -> list[float]:
    """At most ``most`` evenly spaced losses (the first and the last included), for the record."""
    if len(losses) <= most:
        return [round(v, 6) for v in losses]
    idx = [round(i * (len(losses) - 1) / (most - 1)) for i in range(most)]
    return [round(losses[i], 6) for i in idx]
