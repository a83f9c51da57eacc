"""Parking (harness/render/offload.py): an unchanged weight goes home without a copy, a replaced one is carried home.

Needs CUDA (``pytest -m gpu``): the host/device split is the point, and ``param.data`` cannot move to a meta device.
"""

from __future__ import annotations

import pytest
import torch

from harness.render.offload import HOST, BlockStreamer, Parking

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")]


class Toy(torch.nn.Module):
    """Shaped like a Wan transformer for the streamer: repeated ``blocks`` plus a non-block head."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_parked_weights_are_pinned_and_swaps_reuse_them():
    model = Toy().cuda()
    parking = Parking(torch.device("cuda"))
    parking.park(model)
    assert all(p.device == HOST and p.is_pinned() for p in model.parameters())
    homes = [p.data_ptr() for p in model.parameters()]
    for _ in range(2):
        parking.upload(model)
        assert all(p.is_cuda for p in model.parameters())
        parking.park(model)
    assert [p.data_ptr() for p in model.parameters()] == homes


def test_a_weight_replaced_on_the_device_is_carried_home():
    """A merged LoRA replaces weights while the expert is resident: parking must keep the new values, not the home."""
    model = Toy().cuda()
    parking = Parking(torch.device("cuda"))
    parking.park(model)
    parking.upload(model)
    merged = torch.full_like(model.head.weight, 3.0)
    model.head.weight.data = merged
    parking.park(model)
    assert model.head.weight.device == HOST and model.head.weight.is_pinned()
    assert torch.equal(model.head.weight.data, merged.cpu())


def test_streamed_forward_equals_resident_forward():
    torch.manual_seed(0)
    model = Toy().cuda()
    x = torch.randn(5, 4, device="cuda")
    resident = model(x)
    streamer = BlockStreamer(model, Parking(torch.device("cuda")))
    assert all(p.device == HOST for b in model.blocks for p in b.parameters()) and model.head.weight.is_cuda
    assert torch.equal(model(x), resident)
    assert all(p.device == HOST for b in model.blocks for p in b.parameters())
    streamer.remove()


def _merge_once(linear, layer):
    from harness.render.lora import applied

    with applied({"high": "f"}, {"high": {"blocks.0": layer}}, {"high": _Holder(linear)}, 1.0, merged=True):
        merged = linear.weight.detach().clone()
    return merged


class _Holder(torch.nn.Module):
    """A transformer stand-in whose only LoRA target is ``blocks.0``."""

    def __init__(self, linear):
        super().__init__()
        self.blocks = torch.nn.ModuleList([linear])


def test_merged_lora_reuses_the_parked_original_while_the_weight_is_unchanged():
    """Switching merged LoRAs copies the originals to the host once, then reuses that pinned copy; a weight
    replaced meanwhile (another model, a quantization) is parked afresh, and every restore is bit-exact."""
    from harness.render.lora import _HOST_ORIGINALS, LoraLayer

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False).to("cuda", torch.bfloat16)
    original = linear.weight.detach().clone()
    layer = LoraLayer(down=torch.randn(4, 64), up=torch.randn(32, 4) * 0.1)
    first = _merge_once(linear, layer)
    assert torch.equal(linear.weight, original) and not torch.equal(first, original)
    host = _HOST_ORIGINALS[linear.weight][0]
    assert host.is_pinned()
    allocated = torch.cuda.memory_allocated()
    assert torch.equal(_merge_once(linear, layer), first)
    assert _HOST_ORIGINALS[linear.weight][0] is host  # reused, not copied again
    assert torch.cuda.memory_allocated() == allocated  # and no device copy of the original is kept alive
    replaced = torch.randn_like(original)
    linear.weight.data = replaced.clone()
    _merge_once(linear, layer)
    assert torch.equal(linear.weight, replaced) and _HOST_ORIGINALS[linear.weight][0] is not host
