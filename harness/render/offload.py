"""Memory modes with identical numerics: only *where* weights wait between uses changes, never the kernels.

* ``none``       everything on the compute device;
* ``experts``    only the active expert on the GPU, swapped at the boundary; the text encoder visits the GPU only
                 to encode (two 14B experts never sit on the card together: fits 80 GB);
* ``sequential`` every transformer/encoder block is moved to the GPU just before it runs and back after, the small
                 non-block modules and the VAE stay resident (fits 24 GB cards).

Moving a tensor between devices copies it exactly, and every matmul still runs on the compute device with the same
shapes, so all three modes give the same bytes (tests and ``benchmarks/RESULTS.md`` check it).

Both offload modes share one ``Parking``: every weight has a *home* in pinned host memory. A visit to the GPU is an
upload from that home; going back is free when the weight is unchanged (the parameter is pointed at its home again),
and a real device-to-host copy only when something replaced the weight meanwhile (a merged LoRA). So an expert swap
costs one fast pinned upload instead of two pageable copies, and diffusers' trap (restoring from a stale pinned copy,
which would silently undo a merged LoRA) cannot happen: a replaced weight is never mistaken for its home.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef

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


def _plain(module: torch.nn.Module) -> bool:
    """Whether every parameter is a plain tensor, so pointing ``param.data`` elsewhere is a faithful move.
    Quantized weights (quanto tensor subclasses) only move through ``Module.to``."""
    return all(type(p.data) is torch.Tensor for p in module.parameters())


class StorageMark:
    """Recognises a tensor's storage later without keeping it alive (a replaced weight's memory is freed at once):
    ``matches(t)`` only while that very storage still exists and ``t`` is a full view of it."""

    def __init__(self, tensor: torch.Tensor):
        self._ref = StorageWeakRef(tensor.untyped_storage())
        self._layout = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)

    def matches(self, tensor: torch.Tensor) -> bool:
        return not self._ref.expired() and tensor.untyped_storage()._cdata == self._ref.cdata and \
            (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) == self._layout


def pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy in page-locked memory (uploads run at full PCIe speed), copied straight from the device."""
    if not torch.cuda.is_available() or type(tensor) is not torch.Tensor:
        return tensor.to(HOST)
    try:
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device=HOST, pin_memory=True)
    except RuntimeError:  # no pinnable memory left: pageable still works, only slower
        return tensor.to(HOST)
    host.copy_(tensor)
    return host


class Parking:
    """Pinned host homes for the weights of offloaded modules, shared by the ``experts`` and ``sequential`` modes.

    ``upload`` points each parameter at a device copy of its home and remembers both; ``park`` points it back at the
    home when the device tensor is still the one uploaded (a forward never replaces weights), else copies the new
    weight into a fresh pinned home. Weights are only ever *replaced* (``param.data = ...``), never edited in place,
    anywhere in the harness; that is what makes the identity check sound.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._visiting: dict[int, tuple[torch.Tensor, StorageMark]] = {}  # id(param) -> (home, mark of its upload)

    def upload(self, module: torch.nn.Module) -> None:
        if not _plain(module):
            module.to(self.device)
            return
        for param in module.parameters():
            if param.device.type == HOST.type:
                home = param.data
                param.data = home.to(self.device, non_blocking=True)
                self._visiting[id(param)] = (home, StorageMark(param.data))
        _move_buffers(module, self.device)

    def park(self, module: torch.nn.Module) -> None:
        if not _plain(module):
            module.to(HOST)
            return
        for param in module.parameters():
            if param.device.type == HOST.type:
                if not param.data.is_pinned():
                    param.data = pinned_copy(param.data)
                continue
            home, sent = self._visiting.pop(id(param), (None, None))
            param.data = home if sent is not None and sent.matches(param.data) else pinned_copy(param.data)
        _move_buffers(module, HOST)

    def settle(self, module: torch.nn.Module) -> None:
        """Make ``module`` resident for good and let its pinned homes go (``--offload none``)."""
        self.upload(module)
        for param in module.parameters():
            self._visiting.pop(id(param), None)


def _move_buffers(module: torch.nn.Module, device: torch.device) -> None:
    for child in module.modules():
        for name, buf in list(child._buffers.items()):
            if buf is not None and buf.device.type != device.type:
                child._buffers[name] = buf.to(device, non_blocking=device.type != HOST.type)


class BlockStreamer:
    """Forward hooks that bring one block onto the compute device for its forward and park it afterwards.

    Everything outside the blocks (embeddings, final norm and projection) stays resident.
    """

    def __init__(self, module: torch.nn.Module, parking: Parking):
        self.parking = parking
        self.handles = []
        blocks = _blocks(module)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        inside = {id(m) for b in blocks for m in b.modules()}
        for child in module.modules():
            if id(child) in inside:
                continue
            for param in child.parameters(recurse=False):
                if id(param) not in in_blocks and param.device.type == HOST.type:
                    param.data = param.data.to(parking.device)
            for name, buf in list(child._buffers.items()):
                if buf is not None:
                    child._buffers[name] = buf.to(parking.device)
        for block in blocks:
            parking.park(block)
            self.handles.append(block.register_forward_pre_hook(lambda block, args: self.parking.upload(block)))
            self.handles.append(block.register_forward_hook(lambda block, args, output: self.parking.park(block)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
