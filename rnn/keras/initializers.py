"""Keras 3 weight initializers for rnn.keras, drawn with torch's random generator.

Each initializer is a callable `init(shape, dtype=torch.float32) -> torch.Tensor` with Keras's
formulas (keras/src/initializers, Keras 3.15):

    fans of a shape: 1-D (n,) -> fan_in = fan_out = n; 2-D (a, b) -> fan_in = a, fan_out = b
    VarianceScaling(scale, mode, distribution): n = fan_in | fan_out | (fan_in + fan_out)/2
        truncated_normal: stddev sqrt(scale/n) / 0.8796..., cut at 2 stddev
        untruncated_normal: stddev sqrt(scale/n);  uniform: limit sqrt(3*scale/n)
    GlorotUniform/Normal = VarianceScaling(1, fan_avg, ...), HeUniform/Normal (2, fan_in),
    LecunUniform/Normal (1, fan_in); Orthogonal(gain): QR of a normal matrix, sign-fixed by
    diag(R), over the whole 2-D shape; Identity(gain): gain * eye(a, b); RandomNormal(0, 0.05),
    RandomUniform(-0.05, 0.05), TruncatedNormal(0, 0.05, cut at 2 stddev), Constant, Zeros, Ones.

`get(identifier)` accepts an instance, a callable, or a Keras name: snake_case ("glorot_uniform"),
the class name ("GlorotUniform") or an alias ("normal", "uniform", "one", "zero").
A `seed=` makes one initializer reproducible on its own (its own torch.Generator); without a seed
the global torch RNG is used, so `torch.manual_seed` seeds everything.
"""
from __future__ import annotations

import math
import re

import torch

__all__ = [
    "Initializer", "Constant", "Zeros", "Ones", "Identity", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform",
    "LecunNormal", "LecunUniform", "Orthogonal", "get",
]

_TRUNC_STD = 0.87962566103423978  # stddev of a unit normal truncated to [-2, 2]


def compute_fans(shape):
    """(fan_in, fan_out) of a weight shape, as Keras computes them."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base class: subclasses implement `_draw(shape, generator) -> float64 CPU tensor`."""

    def __init__(self, seed=None):
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.seed = seed
        self._generator = None

    def _gen(self):
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def __call__(self, shape, dtype=torch.float32):
        shape = tuple(int(s) for s in shape)
        return self._draw(shape, self._gen()).to(dtype)

    def _draw(self, shape, generator):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Constant(Initializer):
    def __init__(self, value=0.0):
        super().__init__()
        self.value = float(value)

    def _draw(self, shape, generator):
        return torch.full(shape, self.value, dtype=torch.float64)


class Zeros(Constant):
    def __init__(self):
        super().__init__(0.0)


class Ones(Constant):
    def __init__(self):
        super().__init__(1.0)


class Identity(Initializer):
    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = float(gain)

    def _draw(self, shape, generator):
        if len(shape) != 2:
            raise ValueError(f"Identity initializer needs a 2-D shape, got shape={shape}")
        return self.gain * torch.eye(*shape, dtype=torch.float64)


def _truncated_normal(shape, mean, stddev, generator):
    # Resample out-of-range values until everything lies within 2 stddev (Keras's truncation).
    out = torch.randn(shape, dtype=torch.float64, generator=generator)
    bad = out.abs() > 2.0
    while bad.any():
        out[bad] = torch.randn(int(bad.sum()), dtype=torch.float64, generator=generator)
        bad = out.abs() > 2.0
    return mean + stddev * out


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def _draw(self, shape, generator):
        return self.mean + self.stddev * torch.randn(shape, dtype=torch.float64, generator=generator)


class TruncatedNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        super().__init__(seed)
        self.mean, self.stddev = float(mean), float(stddev)

    def _draw(self, shape, generator):
        return _truncated_normal(shape, self.mean, self.stddev, generator)


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        super().__init__(seed)
        self.minval, self.maxval = float(minval), float(maxval)

    def _draw(self, shape, generator):
        u = torch.rand(shape, dtype=torch.float64, generator=generator)
        return self.minval + (self.maxval - self.minval) * u


class VarianceScaling(Initializer):
    MODES = ("fan_in", "fan_out", "fan_avg")
    DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        super().__init__(seed)
        if not scale > 0:
            raise ValueError(f"VarianceScaling scale must be positive, got scale={scale!r}")
        if mode not in self.MODES:
            raise ValueError(f"VarianceScaling mode must be one of {self.MODES}, got mode={mode!r}")
        if distribution == "normal":
            distribution = "truncated_normal"
        if distribution not in self.DISTRIBUTIONS:
            raise ValueError(
                f"VarianceScaling distribution must be one of {self.DISTRIBUTIONS}, "
                f"got distribution={distribution!r}"
            )
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def _draw(self, shape, generator):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution == "truncated_normal":
            return _truncated_normal(shape, 0.0, math.sqrt(scale) / _TRUNC_STD, generator)
        if self.distribution == "untruncated_normal":
            return math.sqrt(scale) * torch.randn(shape, dtype=torch.float64, generator=generator)
        limit = math.sqrt(3.0 * scale)
        return limit * (2.0 * torch.rand(shape, dtype=torch.float64, generator=generator) - 1.0)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, "seed": self.seed}


def _variance_scaling(name, scale, mode, distribution):
    def __init__(self, seed=None):
        VarianceScaling.__init__(self, scale, mode, distribution, seed)

    def get_config(self):
        return {"seed": self.seed}

    return type(name, (VarianceScaling,), {"__init__": __init__, "get_config": get_config,
                                            "__doc__": f"VarianceScaling({scale}, {mode}, {distribution})."})


GlorotUniform = _variance_scaling("GlorotUniform", 1.0, "fan_avg", "uniform")
GlorotNormal = _variance_scaling("GlorotNormal", 1.0, "fan_avg", "truncated_normal")
HeUniform = _variance_scaling("HeUniform", 2.0, "fan_in", "uniform")
HeNormal = _variance_scaling("HeNormal", 2.0, "fan_in", "truncated_normal")
LecunUniform = _variance_scaling("LecunUniform", 1.0, "fan_in", "uniform")
LecunNormal = _variance_scaling("LecunNormal", 1.0, "fan_in", "truncated_normal")


class Orthogonal(Initializer):
    def __init__(self, gain=1.0, seed=None):
        super().__init__(seed)
        self.gain = float(gain)

    def _draw(self, shape, generator):
        if len(shape) < 2:
            raise ValueError(f"Orthogonal initializer needs at least a 2-D shape, got shape={shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        a = torch.randn(max(rows, cols), min(rows, cols), dtype=torch.float64, generator=generator)
        q, r = torch.linalg.qr(a)
        q = q * torch.sign(torch.diagonal(r))  # makes Q uniformly distributed (Haar)
        if rows < cols:
            q = q.T
        return self.gain * q.reshape(shape)


_CLASSES = [Constant, Zeros, Ones, Identity, RandomNormal, RandomUniform, TruncatedNormal,
            VarianceScaling, GlorotUniform, GlorotNormal, HeNormal, HeUniform, LecunNormal,
            LecunUniform, Orthogonal]


def _snake(name):
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


_BY_NAME = {c.__name__: c for c in _CLASSES}
_BY_NAME.update({_snake(c.__name__): c for c in _CLASSES})
_BY_NAME.update({"normal": RandomNormal, "uniform": RandomUniform, "one": Ones, "zero": Zeros,
                 "OrthogonalInitializer": Orthogonal, "IdentityInitializer": Identity})


def get(identifier, argument="initializer"):
    """An initializer from a Keras name, an instance or any callable(shape, dtype)."""
    if isinstance(identifier, Initializer) or (callable(identifier) and not isinstance(identifier, type)):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Initializer):
        return identifier()
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    names = sorted(n for n in _BY_NAME if n.islower())
    raise ValueError(f"{argument}: unknown initializer {identifier!r}; expected one of {names} "
                     "(or an rnn.keras.initializers instance)")
