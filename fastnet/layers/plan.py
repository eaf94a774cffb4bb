"""Inference plans: a Sequential's eval-mode forward on the CPU, prepared once per input
shape and dtype.

A batch-1 forward of LeNet-5 spent most of its time in Python around small kernels: each
layer's input checks and output allocation, each kernel wrapper's geometry and path
choice, the convolution's padded-input workspace and weight packing. A plan does that
work once. The first eval-mode call with a new input shape runs the layers as usual
(their checks raise the usual errors), then ``build`` asks each layer for its step
(``Module._plan_step``); later calls with an input of that shape and dtype, C-contiguous,
run the steps: one identity check of the input, then the kernels, each writing into a
per-thread buffer of the plan (the next step's input), and the last kernel into a new
array, the one returned (never a buffer: the caller owns it). Anything else (another
shape, a view, a list, training mode) goes the usual way. A ReLU right after a Conv2D or
Dense without activation is fused into its epilogue (the same act(v + b), bitwise).

A plan is valid while ``module.GENERATION`` is unchanged: it is bumped when a public
attribute of any Module is set (``train()`` / ``eval()``, ``to()``, a layer's geometry or
child replaced), a Parameter's or Buffer's array replaced. Plans hold the parameter arrays
and read them on every call, so in-place edits (an optimizer step, ``load_state_dict``,
``weight.data[...] = ...``) are seen by the next call. Results are bitwise those of the
layer-by-layer forward: the same kernels in the same order, each on the build (serial or
parallel) its size picks as always, except where the bytes cannot depend on the build and
the convolution's parallel build is running anyway: its padding (a copy) and a max pool
after it run parallel with it (kernels.PLANS).

Threads: the steps' buffers (and the convolutions' scratch) are per thread, so several
Python threads can run one model at once.
"""
import threading

import numpy as np

from ..device import CPU
from .module import Module


class Step:
    """One step of a plan: ``run(out, x, *scratch)`` writes ``out`` (``shape``, ``dtype``)
    from ``x``, ``scratch`` the (shape, dtype) of per-thread arrays it also writes; or,
    with ``view``, ``run(x)`` returns a view of x."""

    __slots__ = ("run", "shape", "dtype", "scratch", "view")

    def __init__(self, run, shape, dtype, scratch=(), view=False):
        self.run, self.shape, self.dtype = run, tuple(shape), np.dtype(dtype)
        self.scratch, self.view = tuple(scratch), view


def _overridden(layer):
    """Whether ``layer`` may run other code than its plan step stands for: its ``forward``
    or ``__call__`` comes from a class outside fastnet (a user's subclass overriding them),
    or was set on the instance. Such a layer is called, never planned."""
    cls = type(layer)
    for name in ("forward", "__call__"):
        if name in vars(layer):
            return True
        owner = next(c for c in cls.__mro__ if name in vars(c))
        if not owner.__module__.startswith("fastnet."):
            return True
    return False


def build(layers, shape, dtype):
    """The steps of ``layers`` for an input of ``shape`` and ``dtype`` (one that their
    forward has just accepted), or None when one of them has no plan form (a layer
    without ``_plan_step``, one in training mode or not on the CPU)."""
    if any(layer.training or layer.device != CPU
           or type(layer)._plan_step is Module._plan_step or _overridden(layer)
           for layer in layers):
        return None  # (before any step is prepared: this may run on every call)
    steps = []
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        got = layer._plan_step(shape, dtype, nxt)
        if got is None:
            return None
        step, fused = got
        steps.append(step)
        shape, dtype = step.shape, step.dtype
        i += 1 + fused
    return steps


class InferencePlan:
    """The steps for one input ``shape`` and ``dtype``, valid at ``generation``."""

    __slots__ = ("shape", "dtype", "generation", "steps", "_local")

    def __init__(self, shape, dtype, generation, steps):
        self.shape, self.dtype, self.generation = shape, dtype, generation
        self.steps = steps
        self._local = threading.local()

    def run(self, x):
        """The forward of an input the caller has matched against shape, dtype and
        C-contiguity."""
        try:
            calls = self._local.calls
        except AttributeError:
            calls = self._bind()
        for f in calls:
            x = f(x)
        return x

    def _bind(self):
        """This thread's calls: each step bound to its output buffer and scratch (the last
        kernel step allocates its output per call)."""
        last = max((i for i, s in enumerate(self.steps) if not s.view), default=-1)
        calls = []
        for i, s in enumerate(self.steps):
            scratch = tuple(np.empty(shape, dt) for shape, dt in s.scratch)
            if s.view:
                f = s.run
            elif i == last:
                f = _fresh(s.run, s.shape, s.dtype, scratch)
            else:
                f = _buffered(s.run, np.empty(s.shape, s.dtype), scratch)
            calls.append(f)
        self._local.calls = calls
        return calls


def _fresh(run, shape, dtype, scratch):
    if scratch:
        def call(x):
            out = np.empty(shape, dtype)
            run(out, x, *scratch)
            return out
    else:
        def call(x):
            out = np.empty(shape, dtype)
            run(out, x)
            return out
    return call


def _buffered(run, out, scratch):
    if scratch:
        def call(x):
            run(out, x, *scratch)
            return out
    else:
        def call(x):
            run(out, x)
            return out
    return call
