"""Memory modes with identical numerics: only *where* weights wait between uses changes, never the kernels.

* ``none``       everything on the compute device;
* ``experts``    only the active expert on the GPU, swapped at the boundary; the text encoder visits the GPU only
                 to encode (two 14B experts never sit on the card together: fits 80 GB);
* ``sequential`` every transformer/encoder block is moved to the GPU just before it runs and back after, the small
                 non-block modules and the VAE stay resident (fits 24 GB cards).

Moving a tensor between devices copies it exactly, and every matmul still runs on the compute device with the same
shapes, so all three modes give the same bytes (tests and ``benchmarks/RESULTS.md`` check it). diffusers' own group
offloading keeps pinned CPU copies of the weights it restores from, which would silently undo a merged LoRA; these
hooks move ``param.data`` itself, so merged weights travel with the module.
"""

from __future__ import annotations

import torch

OFFLOAD_MODES = ("none", "experts", "sequential")
HOST = torch.device("cpu")


def _blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Wan transformer (``blocks``) or a UMT5 encoder (``encoder.block``)."""
    if hasattr(module, "blocks"):
        return list(module.blocks)
    encoder = getattr(module, "encoder", None)
    if encoder is not None and hasattr(encoder, "block"):
        return list(encoder.block)
    raise ValueError(f"{type(module).__name__} has no repeated blocks to offload")


class BlockStreamer:
    """Forward hooks that bring one block onto the compute device for its forward and back afterwards.

    Blocks wait in pinned host memory; going back is free: the block's parameters are pointed at the host tensors
    they had before the forward (a forward never changes weights), so no device-to-host copy is made. Whatever those
    host tensors are (the originals, or a merged LoRA's weights) is exactly what the next forward uploads.
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device = device
        self.handles = []
        self._host: dict[int, list] = {}
        blocks = _blocks(module)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        for child in module.modules():  # everything outside the blocks stays resident
            for name, param in child.named_parameters(recurse=False):
                if id(param) not in in_blocks:
                    param.data = param.data.to(device)
        for block in blocks:
            for child in block.modules():
                for name, buf in child.named_buffers(recurse=False):
                    child._buffers[name] = buf.to(HOST)
                for param in child.parameters(recurse=False):
                    moved = param.data.to(HOST)
                    param.data = _pinned(moved) if type(moved) is torch.Tensor else moved
            self.handles.append(block.register_forward_pre_hook(self._onload))
            self.handles.append(block.register_forward_hook(self._offload))
        inside = {id(m) for b in blocks for m in b.modules()}
        for child in (m for m in module.modules() if id(m) not in inside):
            for name, buf in child.named_buffers(recurse=False):
                child._buffers[name] = buf.to(device)

    def _onload(self, block, args):
        if not _plain(block):  # quantized weights (quanto tensor subclasses) only move through Module.to
            block.to(self.device)
            return
        saved = []
        for child in block.modules():
            for param in child.parameters(recurse=False):
                saved.append((param, param.data))
                param.data = param.data.to(self.device, non_blocking=True)
            for name, buf in list(child._buffers.items()):
                if buf is not None:
                    saved.append((child, name, buf))
                    child._buffers[name] = buf.to(self.device, non_blocking=True)
        self._host[id(block)] = saved

    def _offload(self, block, args, output):
        if not _plain(block):
            block.to(HOST)
            return
        for entry in self._host.pop(id(block), []):
            if len(entry) == 2:
                entry[0].data = entry[1]
            else:
                entry[0]._buffers[entry[1]] = entry[2]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _plain(block: torch.nn.Module) -> bool:
    """Whether every parameter is a plain tensor, so pointing ``param.data`` elsewhere is a faithful move."""
    return all(type(p.data) is torch.Tensor for p in block.parameters())


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """Page-locked host memory makes uploads several times faster; quantized tensor types may not support it."""
    if not torch.cuda.is_available():
        return tensor
    try:
        return tensor.pin_memory()
    except (RuntimeError, TypeError, NotImplementedError):
        return tensor
