"""Fully sharded data parallelism (PyTorch FSDP2, `torch.distributed.fsdp.fully_shard`) for students
too big to replicate on every device.

Under `torchrun ... --fsdp` each rank keeps 1/N of the student's parameters, gradients and Adam state;
a layer's full weights are all-gathered just before it runs and freed after, and gradients are
reduce-scattered (averaged over ranks, as DDP does, so the trainer's `world_size / global_tokens`
scaling holds unchanged). The units are each encoder and decoder layer, then the rest of the model
(embeddings, shared with the output layer, and the final layer norms) as the root, as in torchtitan.

Checkpoints stay ordinary: rank 0 assembles the full state dict (`get_model_state_dict` with
`full_state_dict=True`, offloaded to CPU) and writes the usual Hugging Face model folder, and the
optimizer state is stored unsharded with parameter names as keys, so a run saved under FSDP resumes
under any number of processes, with or without FSDP. Every function here is a collective: all ranks
must call it.
"""

from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
FULL_ON_EVERY_RANK = StateDictOptions(full_state_dict=True)


def transformer_layers(model) -> list[torch.nn.Module]:
    """The encoder and decoder layers of a Hugging Face encoder-decoder (Marian, BART, T5-like)."""
    base = model.get_encoder(), model.get_decoder()
    layers = []
    for stack in base:
        found = getattr(stack, "layers", None) or getattr(stack, "block", None)
        if found is None:
            raise ValueError(f"{type(stack).__name__}: no .layers or .block to shard")
        layers.extend(found)
    return layers


def shard_model(model, device: torch.device, world_size: int) -> None:
    """Apply FSDP2 in place: each transformer layer is one unit, the whole model the root unit."""
    mesh = init_device_mesh(device.type, (world_size,))
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_model_state(model, every_rank: bool) -> dict[str, torch.Tensor]:
    """The unsharded state dict: on every rank (on its device), or on rank 0 only (CPU tensors; empty
    on the other ranks)."""
    return get_model_state_dict(model, options=FULL_ON_EVERY_RANK if every_rank else FULL_ON_RANK0)


def full_optimizer_state(model, optimizer) -> dict:
    """The unsharded optimizer state keyed by parameter name, on rank 0; empty on the others."""
    return get_optimizer_state_dict(model, optimizer, options=FULL_ON_RANK0)


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """Give each rank its shard of a full, name-keyed optimizer state (every rank passes the whole)."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=FULL_ON_EVERY_RANK)
