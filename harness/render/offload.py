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
    """Forward hooks that bring one block onto the compute device for its forward and send it back afterwards."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.device = device
        self.handles = []
        blocks = _blocks(module)
        block_ids = {id(b) for b in blocks}
        for child in module.modules():  # everything outside the blocks stays resident
            if id(child) in block_ids:
                continue
            for name, param in child.named_parameters(recurse=False):
                if not any(param is p for b in blocks for p in b.parameters()):
                    param.data = param.data.to(device)
            for name, buf in child.named_buffers(recurse=False):
                child._buffers[name] = buf.to(device)
        for block in blocks:
            block.to(HOST)
            self.handles.append(block.register_forward_pre_hook(self._onload))
            self.handles.append(block.register_forward_hook(self._offload))

    def _onload(self, block, args):
        block.to(self.device)

    def _offload(self, block, args, output):
        block.to(HOST)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
