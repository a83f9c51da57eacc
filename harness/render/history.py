"""The base weights a preview was rendered on, rebuilt by replaying ai-toolkit's merge history (§8.2, docs/parity).

Each earlier merged round left bf16 residue in the base (``lora.merge_round``). A replayed base is kept as its
difference from the pristine weights (a residue touches a few percent of the elements per round: 7.8 % for the oracle's
case_d LoRA on the tiny model), so a small cache holds several; :class:`HistoryCache` extends the longest cached
prefix of a history, so a job's previews rendered in step order cost one replayed round each. Replays run on the
compute device from the weights wherever they wait, and installing one only copies, so every offload mode gives the
same bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .lora import check_targets, merge_round, weights_replaced
from .offload import HOST, pinned_copy


@dataclass(frozen=True)
class Residue:
    """One weight's difference from its pristine value: the changed flat positions and their values, or (when over a
    fifth of the elements changed, where that is smaller) the whole replayed weight. Kept on the host."""

    index: torch.Tensor | None
    values: torch.Tensor

    @classmethod
    def between(cls, pristine: torch.Tensor, replayed: torch.Tensor) -> "Residue | None":
        """Compared bit for bit (a -0.0 or a NaN payload counts); None when nothing changed."""
        changed = (replayed.view(torch.int16) != pristine.view(torch.int16)).reshape(-1)
        index = changed.nonzero().squeeze(1)
        if index.numel() == 0:
            return None
        if index.numel() * 5 > changed.numel():  # an int64 index and a bf16 value cost 10 bytes, a dense element 2
            return cls(None, replayed.to(HOST, copy=True))
        return cls(index.to(HOST), replayed.reshape(-1)[index].to(HOST))

    def applied_to(self, pristine: torch.Tensor) -> torch.Tensor:
        """The replayed weight, on the pristine weight's device (pinned there when it is)."""
        if self.index is None:
            out = self.values.to(pristine.device, copy=True)
        else:
            out = pristine.clone()
            out.view(-1)[self.index.to(out.device)] = self.values.to(out.device)
        return pinned_copy(out) if pristine.is_pinned() else out


ReplayedBase = dict  # (expert side, module name) -> Residue; absent: the pristine weight


def replay_round(experts: dict, base: ReplayedBase, layers: dict, multiplier: float, device) -> ReplayedBase:
    """``base`` after one more merged round with ``layers`` ({side: (path, parsed layers)}) at ``multiplier``."""
    out = dict(base)
    for side, (path, parsed) in layers.items():
        targets = check_targets(path, parsed, experts[side])
        for name, layer in parsed.items():
            weight = targets[name].weight.data
            if type(weight) is not torch.Tensor:  # quantized: ai-toolkit's merge skips those weights
                continue
            pristine = weight.to(device)
            key = (side, name)
            current = base[key].applied_to(pristine) if key in base else pristine
            replayed = merge_round(current, layer, multiplier, device)
            if replayed is current:
                continue
            residue = Residue.between(pristine, replayed)
            if residue is None:
                out.pop(key, None)
            else:
                out[key] = residue
    return out


@contextmanager
def installed(experts: dict, base: ReplayedBase):
    """The experts' weights as ``base`` says for the duration; the pristine ones come back bit-exactly.

    Each replayed weight is built just before it replaces its pristine one (which goes to the host), so a 14B expert
    never holds two copies of its weights on the device."""
    modules = {side: dict(experts[side].named_modules()) for side in {side for side, _ in base}}
    linears = ((modules[side][name], residue) for (side, name), residue in base.items())
    with weights_replaced((linear, residue.applied_to(linear.weight.data)) for linear, residue in linears):
        yield


def _round_key(merge_round_) -> tuple:
    """A round as the files say (path and modification time per side) and its multiplier."""
    files = []
    for side in ("high", "low"):
        path = getattr(merge_round_.lora, side)
        files.append((side, str(path), Path(path).stat().st_mtime_ns) if path is not None else (side,))
    return (tuple(files), float(merge_round_.multiplier))


class HistoryCache:
    """Replayed bases by (model bundle, history), least recently used evicted first.

    A lookup replays only the rounds after the longest cached prefix of the history. ``size`` bounds the memory:
    each entry is at most the size of the LoRA-targeted weights (bf16), usually a small fraction of it.
    """

    def __init__(self, read_lora, size: int = 2):
        self.read_lora = read_lora  # Path -> parsed layers (the engine's LoraCache)
        self.size = size
        self.rounds_replayed = 0  # the tests check: one per round for a job's previews in step order
        self._entries: "OrderedDict[tuple, ReplayedBase]" = OrderedDict()

    def base_for(self, bundle, history: tuple) -> ReplayedBase:
        """The base ``bundle``'s pristine weights become after ``history`` (``spec.MergeRound``s, in order)."""
        owner = (str(bundle.base_dir), str(bundle.device), bundle.cast_whole_bf16)
        keys = tuple(_round_key(r) for r in history)
        done, base = 0, {}
        for n in range(len(keys), 0, -1):
            if (owner, keys[:n]) in self._entries:
                done, base = n, self._entries[(owner, keys[:n])]
                break
        for merged in history[done:]:
            layers = {side: (Path(path), self.read_lora(Path(path)))
                      for side in ("high", "low") if (path := getattr(merged.lora, side)) is not None}
            base = replay_round(bundle.experts, base, layers, merged.multiplier, bundle.device)
            self.rounds_replayed += 1
        self._entries[(owner, keys)] = base
        self._entries.move_to_end((owner, keys))
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return base
