"""Optional speed-ups of the U-Net call: ``torch.compile``, CUDA graphs, channels-last.

All are opt-in and leave the eager path intact: they replace a module's ``forward`` on the *instance* (the
module object, its parameters and state-dict keys stay the same) with a function that falls back to the
original ``forward``, with a warning, whenever the fast path fails. :func:`eager` switches every installed
speed-up off for a block (FLOP counting, which must see the eager operators). :func:`remove` undoes one.

CUDA graphs target the launch-bound small sizes (512²: ~25 kernels' worth of Python per block, ~1000 launches
per U-Net call): one graph per static input signature (shapes, dtypes, and the attention patches' own key: plain
processors with float reference strengths, ``AttentionPatches.graph_key``) is captured after a warm-up and
replayed with the inputs copied into its static buffers.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

_EAGER: ContextVar[bool] = ContextVar("colorize_speedups_eager", default=False)


@contextmanager
def eager() -> Iterator[None]:
    """Inside this block every installed speed-up runs the original eager ``forward``."""
    token = _EAGER.set(True)
    try:
        yield
    finally:
        _EAGER.reset(token)


@dataclass
class SpeedupState:
    """What a speed-up did: ``kind``; ``active`` while it is used; ``fallback`` = the reason it was dropped."""

    kind: str
    active: bool = True
    fallback: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "active": self.active, "fallback": self.fallback, **self.details}


def _install(module: nn.Module, fast: Callable[..., Any], state: SpeedupState) -> SpeedupState:
    """Route ``module.forward`` through ``fast``, falling back to the previous forward for good on failure.

    A failure whose eager retry fails too is the caller's error: it is raised and the speed-up kept."""
    previous = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if not state.active or _EAGER.get():
            return previous(*args, **kwargs)
        try:
            return fast(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of the fast path falls back to eager
            out = previous(*args, **kwargs)
            state.active, state.fallback = False, f"{type(exc).__name__}: {exc}".strip()[:500]
            warnings.warn(f"{state.kind} failed, running eager from now on: {state.fallback}", RuntimeWarning,
                          stacklevel=2)
            return out

    forward.__colorize_previous__ = previous  # type: ignore[attr-defined]
    forward.__colorize_state__ = state  # type: ignore[attr-defined]
    module.forward = forward  # type: ignore[method-assign]
    return state


def remove(module: nn.Module) -> None:
    """Undo the last speed-up installed on ``module``."""
    previous = getattr(module.forward, "__colorize_previous__", None)
    if previous is None:
        return
    if getattr(previous, "__self__", None) is module and getattr(previous, "__func__", None) is type(module).forward:
        del module.forward  # back to the class' forward
    else:
        module.forward = previous  # type: ignore[method-assign]


def installed(module: nn.Module) -> list[SpeedupState]:
    """The speed-ups installed on ``module``, innermost first."""
    found, fwd = [], module.forward
    while getattr(fwd, "__colorize_state__", None) is not None:
        found.append(fwd.__colorize_state__)
        fwd = fwd.__colorize_previous__
    return found[::-1]


# ---------------------------------------------------------------------------------------- torch.compile


def compile_module(module: nn.Module, mode: str | None = None, backend: str = "inductor", dynamic: bool | None = False
                   ) -> SpeedupState:
    """``torch.compile`` the module's forward (lazily: compiled on the first call, once per input signature);
    any compile or run failure falls back to eager with a warning (the eager path never breaks)."""
    state = SpeedupState("torch.compile", details={"mode": mode or "default", "backend": backend})
    try:
        fast = torch.compile(module.forward, mode=mode, backend=backend, dynamic=dynamic)
    except Exception as exc:  # noqa: BLE001 - e.g. an unsupported Python or platform
        state.active, state.fallback = False, f"{type(exc).__name__}: {exc}"[:500]
        warnings.warn(f"torch.compile unavailable, running eager: {state.fallback}", RuntimeWarning, stacklevel=2)
        return state
    return _install(module, fast, state)


# ---------------------------------------------------------------------------------------- channels-last


def to_channels_last(*modules: nn.Module) -> int:
    """Store the 4-D weights of ``modules`` channels-last (NHWC; convolutions then keep activations NHWC on
    CUDA, which tensor-core kernels prefer). Returns how many tensors changed layout."""
    n = 0
    for m in modules:
        for p in m.parameters():
            if p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                p.data = p.data.contiguous(memory_format=torch.channels_last)
                n += 1
    return n


# ---------------------------------------------------------------------------------------- CUDA graphs


def _signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """A hashable key of tensor shapes/dtypes/devices, plain values and objects' ``graph_key()``; ``None`` when a
    call cannot be graphed (a non-CUDA tensor, an object without a key, e.g. attention patches with processors or
    tensor strengths, extra keyword inputs)."""
    if kwargs:
        return None
    key: list[Any] = []
    for a in args:
        if isinstance(a, Tensor):
            if a.device.type != "cuda":
                return None
            key.append(("T", tuple(a.shape), a.dtype, a.device))
        elif isinstance(a, (list, tuple)):
            sub = _signature(tuple(a), {})
            if sub is None:
                return None
            key.append((type(a).__name__, sub))
        elif a is None or isinstance(a, (int, float, bool, str)):
            key.append(a)
        elif callable(getattr(a, "graph_key", None)) and (sub := a.graph_key()) is not None:
            key.append(sub)
        else:
            return None
    return tuple(key)


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    return []


def _clone_tree(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone_tree(o) for o in obj)
    return obj


@dataclass
class _Graph:
    graph: Any
    inputs: list[Tensor]
    output: Tensor


def install_cuda_graphs(module: nn.Module, warmup: int = 2, max_graphs: int = 8) -> SpeedupState:
    """Replay CUDA graphs of ``module``'s forward: one per input signature (up to ``max_graphs``), captured on
    the first call with that signature (after ``warmup`` eager calls on a side stream), only for inference
    calls (grad off) with all tensors on CUDA; any other call runs eager. Returns a fresh output each call."""
    state = SpeedupState("cuda graphs", details={"graphs": 0})
    graphs: dict[tuple[Any, ...], _Graph] = {}
    previous = module.forward

    def capture(args: tuple[Any, ...]) -> _Graph:
        static = _clone_tree(args)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                previous(*static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = previous(*static)
        if not isinstance(out, Tensor):
            raise TypeError("CUDA graphs need a forward that returns one tensor")
        return _Graph(graph, _tensors(static), out)

    def fast(*args: Any, **kwargs: Any) -> Any:
        key = _signature(args, kwargs)
        if key is None or torch.is_grad_enabled():
            return previous(*args, **kwargs)
        entry = graphs.get(key)
        if entry is None:
            if len(graphs) >= max_graphs:
                return previous(*args)
            entry = graphs[key] = capture(args)
            state.details["graphs"] = len(graphs)
        for dst, src in zip(entry.inputs, _tensors(args)):
            dst.copy_(src)
        entry.graph.replay()
        return entry.output.clone()

    return _install(module, fast, state)


__all__ = ["SpeedupState", "compile_module", "eager", "install_cuda_graphs", "installed", "remove", "to_channels_last"]
