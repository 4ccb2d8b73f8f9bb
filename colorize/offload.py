"""Sequential CPU offload for low VRAM (complete 1024² under an 8 GB cap within 3× the normal time).

Each large module (CLIP, sketch encoder, U-Net, VAE) lives on the CPU and sits on the compute device only
while it runs. Inference never changes weights, so the CPU tensor of every parameter and buffer is kept as
the *master*: moving to the device is one (pinned, asynchronous) copy per tensor, and moving back is a
pointer swap to the master, with no copy at all.

Why whole-module offload is enough for 8 GB (full-size v1, 1024², CFG batch 2; GiB = 2³⁰ bytes):

* weights: CLIP ViT-H/14 fp32 3.67 (vision 2.35 + text tower 1.32), U-Net fp16 1.61, VAE fp32 0.31,
  sketch encoder fp16 0.12; all resident = 5.7, which with the ~4 GiB peak of an untiled fp32 VAE decode
  at 1024² (128–256 channels × 1024² × 4 B per tensor) is the 10.3 GiB measured on the H200;
* offloaded, the largest stage is CLIP alone (3.7 + the small modules that stay resident, below) ≈ 4.2 GiB;
  sampling needs the U-Net (1.6) + activations < 0.5 (SDPA attention, fp16, 128² latent) ≈ 2.5 GiB;
  the VAE decode 0.43 + ≤ 4 GiB untiled, ≈ 1 GiB with :mod:`colorize.models.vae_tiling` (64-latent tiles);
* cost: the copies per generation are CLIP 3.9 GB + U-Net 1.7 GB host → device, ≈ 0.25 s over PCIe 4/5
  from pinned memory (≈ 25–50 GB/s), against ≈ 0.9 s for a 1024² generation: well inside 3×.

A finer U-Net block offload (each of the 25 blocks moved per call) would bring the sampling stage under
1 GiB but move 1.7 GB per step (34 GB for 20 steps, ≈ 1–1.5 s): only worth it below ~4 GB and not
implemented. A family's extra modules are offloaded the same way (``extra_<name>``, on the device while the
conditioning runs): v2's background and style encoders (≈ 0.7 B parameters, ≈ 1.4 GiB in fp16) and XL v2's
ReferenceNet (2.0 B, ≈ 3.7 GiB in fp16). For XL the five large pieces are then each alone on the device: the
CLIP-bigG tower with the tagger (1.94 B, fp32 7.2 GiB), the ReferenceNet, the U-Net (2.56 B, fp16 4.8 GiB), the
VAE (fp32 0.31 GiB). Modules smaller than ``keep_below_bytes`` (default 512 MiB: the VAE, the sketch encoders,
XL's ClusterConcat, v1.5's small extras) stay on the device, so v2's VAE encode inside the conditioning and
every small module work unchanged.

Nothing here imports ComfyUI (inside the host its model management does the same job).
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

#: names of the Colorizer attributes that are offloaded, in the order a generation uses them
MODULES = ("reference_encoder", "sketch_encoder", "unet", "vae")
KEEP_BELOW_BYTES = 512 << 20
#: name prefix of a family's extra modules (``Colorizer.extras``) under management
EXTRA_PREFIX = "extra_"

F = TypeVar("F", bound=Callable[..., Any])


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in (*module.parameters(), *module.buffers()):
        seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


@dataclass
class _Managed:
    """One offloaded module: its tensors and their CPU masters, and how many callers hold it on the device."""

    module: nn.Module
    tensors: list[Tensor]
    masters: list[Tensor]
    resident: bool
    users: int = 0


@dataclass
class SequentialOffload:
    """Keeps modules on ``home`` (the CPU) and moves each to ``device`` only inside :meth:`on_device`.

    ``pin_memory`` (default: when ``device`` is CUDA) pins the CPU masters for fast asynchronous copies;
    ``empty_cache`` returns a module's freed device blocks to the driver after it moves back, so a memory
    cap sees them free; ``keep_below_bytes``: smaller modules stay on ``device`` (0 = offload everything).
    ``log`` records every move as ``(name, "device" | "home")``; ``bytes_moved`` counts host→device bytes.
    """

    device: torch.device
    home: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pin_memory: bool | None = None
    empty_cache: bool = True
    keep_below_bytes: int = KEEP_BELOW_BYTES
    log: list[tuple[str, str]] = field(default_factory=list)
    bytes_moved: int = 0
    _managed: dict[str, _Managed] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.device, self.home = torch.device(self.device), torch.device(self.home)
        if self.pin_memory is None:
            self.pin_memory = self.device.type == "cuda" and self.home.type == "cpu"

    # ------------------------------------------------------------------ registration
    @torch.no_grad()
    def manage(self, name: str, module: nn.Module) -> None:
        """Take ``module`` under management as ``name``: move it home (or to the device when it is small
        enough to stay there) and keep its CPU masters. Managing a replaced module under the same name
        re-registers it."""
        old = self._managed.get(name)
        if old is not None and old.module is module:
            return
        if old is not None and old.users:
            raise RuntimeError(f"{name} is replaced while it is on the device")
        resident = module_bytes(module) < self.keep_below_bytes
        tensors = list({id(t): t for t in (*module.parameters(), *module.buffers())}.values())
        masters = []
        for t in tensors:
            if resident:
                t.data = t.data.to(self.device)
                masters.append(t.data)
                continue
            master = self._master(t.data)
            t.data = master
            masters.append(master)
        self._managed[name] = _Managed(module, tensors, masters, resident)
        self._release_cache()

    def _master(self, data: Tensor) -> Tensor:
        """The CPU master of a tensor: on ``home``, pinned when asked."""
        master = data.to(self.home)
        if self.pin_memory and not master.is_pinned():
            master = master.pin_memory()
        return master

    def resident(self) -> set[str]:
        """Names of the managed modules that always stay on the device."""
        return {n for n, m in self._managed.items() if m.resident}

    def active(self) -> set[str]:
        """Names of the offloaded modules on the device right now."""
        return {n for n, m in self._managed.items() if m.users and not m.resident}

    # ------------------------------------------------------------------ moves
    @contextmanager
    def on_device(self, **modules: nn.Module) -> Iterator[None]:
        """``with offload.on_device(unet=model.unet): ...`` — the given modules (managed on first use) sit on
        the device inside the block and go home after it; nested uses of one module move it once."""
        with ExitStack() as stack:
            for name, module in modules.items():
                self.manage(name, module)
                stack.enter_context(self._use(name))
            yield

    @contextmanager
    def _use(self, name: str) -> Iterator[None]:
        m = self._managed[name]
        if m.resident:
            yield
            return
        if m.users == 0:
            self._to_device(name, m)
        m.users += 1
        try:
            yield
        finally:
            m.users -= 1
            if m.users == 0:
                self._to_home(name, m)

    def copy_to_device(self, master: Tensor) -> Tensor:
        """The device copy of one master tensor (asynchronous from pinned memory)."""
        return master.to(self.device, non_blocking=bool(self.pin_memory))

    @torch.no_grad()
    def _to_device(self, name: str, m: _Managed) -> None:
        for i, (t, master) in enumerate(zip(m.tensors, m.masters)):
            if t.data.data_ptr() != master.data_ptr():  # replaced while home (e.g. channels-last): adopt it
                master = m.masters[i] = self._master(t.data)
            t.data = self.copy_to_device(master)
            if t.data_ptr() != master.data_ptr():
                self.bytes_moved += master.numel() * master.element_size()
        self.log.append((name, "device"))

    def _to_home(self, name: str, m: _Managed) -> None:
        for t, master in zip(m.tensors, m.masters):
            t.data = master  # weights are frozen in inference: the master is still current, no copy back
        self.log.append((name, "home"))
        self._release_cache()

    def _release_cache(self) -> None:
        if self.empty_cache and self.device.type == "cuda":
            torch.cuda.empty_cache()


def offloaded(*names: str, extras: bool = False) -> Callable[[F], F]:
    """Method decorator for a colorizer: when ``self.offload`` is a :class:`SequentialOffload`, the named
    module attributes (and with ``extras`` every module of ``self.extras``) sit on the compute device for the
    call; otherwise the method runs unchanged."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(self: Any, *args: Any, **kwargs: Any) -> Any:
            offload = getattr(self, "offload", None)
            if offload is None:
                return fn(self, *args, **kwargs)
            modules = {n: getattr(self, n) for n in names}
            if extras:
                modules.update({EXTRA_PREFIX + k: m for k, m in self.extras.items()})
            with offload.on_device(**modules):
                return fn(self, *args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def enable_low_vram(colorizer: Any, keep_below_bytes: int = KEEP_BELOW_BYTES, empty_cache: bool = True
                    ) -> SequentialOffload:
    """Switch a built colorizer to sequential offload (its modules move home now; see the module notes) and
    its VAE tiling to ``auto`` where it was ``off``. Returns the :class:`SequentialOffload` (``colorizer.offload``)."""
    offload = getattr(colorizer, "offload", None)
    if offload is None:
        offload = SequentialOffload(colorizer.device, keep_below_bytes=keep_below_bytes, empty_cache=empty_cache)
    for name in MODULES:
        offload.manage(name, getattr(colorizer, name))
    for name, module in getattr(colorizer, "extras", {}).items():
        offload.manage(EXTRA_PREFIX + name, module)
    colorizer.offload = offload
    if getattr(colorizer, "vae_tiling", "off") == "off":
        colorizer.vae_tiling = "auto"
    return offload


__all__ = ["EXTRA_PREFIX", "KEEP_BELOW_BYTES", "MODULES", "SequentialOffload", "enable_low_vram", "module_bytes", "offloaded"]
