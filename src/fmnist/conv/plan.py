"""Which implementation each layer computes by: a rules table, read once per model and compute.

:data:`RULES` maps (precision, pass with or without gradients, layer geometry) to an
implementation; the first rule that applies wins, and a layer no rule takes, any layer off the
CPU, and every layer of the ``pytorch`` setting computes as PyTorch's own. Max-pools take the
layout-aware pool on the CPU (:func:`fmnist.conv.layout.layout_aware_max_pool`). Each rule is
there because it measured faster than PyTorch's convolution on the layer it takes (the figures:
the documentation's performance page, ``benchmarks/conv_step.py``); every implementation computes
the same convolution for any input it accepts, so a rule only ever costs or saves time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from fmnist.compute import Compute
from fmnist.conv.geometry import Geometry
from fmnist.conv.layers import CONV_IMPLEMENTATIONS, POOL_IMPLEMENTATIONS, Conv2d, LayerPlan, MaxPool2d, map_sides
from fmnist.conv.layout import CHANNELS_LAST_POOL_MAX_MAP
from fmnist.conv.winograd import WINOGRAD_POINTS, winograd_points

SETTINGS = ("auto", "pytorch")  # params.yaml model.conv
MODES = ("train", "infer")  # a pass with gradients, a pass without


@dataclass(frozen=True)
class Rule:
    implementation: str
    precision: str  # "fp32" or "bf16"
    modes: tuple[str, ...]
    applies: Callable[[Geometry], bool]
    why: str


RULES: tuple[Rule, ...] = (
    Rule("im2col-gemm", "bf16", ("train",), lambda g: g.simple and g.in_channels == 1,
         "one input channel (conv1): oneDNN's bf16 weight gradient costs several times its forward pass"),
    Rule("im2col-gemm", "bf16", ("train",), lambda g: g.same and g.side <= 3,
         "3x3 maps: oneDNN's bf16 kernels run far below the matmul peak there"),
    Rule("row-gemm", "bf16", ("train",), lambda g: g.same and 3 < g.side <= 7,
         "up to 7x7 maps: the weight gradient as GEMMs; a whole im2col matrix would cost more than it saves"),
    Rule("winograd", "fp32", MODES, lambda g: g.same and winograd_points(g.side, g.kernel) <= len(WINOGRAD_POINTS),
         "maps that need at most 5 Winograd points per axis: 25 products per channel pair against 81"),
    Rule("fourier", "fp32", MODES, lambda g: g.same and g.side <= 7,
         "up to 7x7 maps: a pointwise product of 41 complex points against 1,225 multiply-adds"),
    Rule("onednn-channels-last", "fp32", MODES,
         lambda g: g.simple and g.in_channels == 1 and g.out_side <= CHANNELS_LAST_POOL_MAX_MAP,
         "one input channel whose output the layout-aware pool takes channels-last: no copy in or out"),
)


def choose(geometry: Geometry, compute: Compute, mode: str, setting: str = "auto") -> str:
    """The implementation for a convolution of ``geometry`` in a ``mode`` pass under ``compute``."""
    if setting != "auto" or compute.device != "cpu":
        return "pytorch"
    return next((r.implementation for r in RULES
                 if r.precision == compute.precision and mode in r.modes and r.applies(geometry)), "pytorch")


@dataclass(frozen=True)
class Plan:
    """Each layer's implementations for a model on ``input_size`` px images under a compute setting."""

    setting: str
    precision: str
    device: str
    input_size: int
    layers: dict[str, LayerPlan] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Plain values, as saved in ``model.pt``."""
        return {"setting": self.setting, "precision": self.precision, "device": self.device,
                "input_size": self.input_size,
                "layers": {name: dataclasses.asdict(p) for name, p in self.layers.items()}}

    @classmethod
    def from_dict(cls, values: dict) -> "Plan":
        layers = {name: LayerPlan(**p) for name, p in values["layers"].items()}
        return cls(values["setting"], values["precision"], values["device"], int(values["input_size"]), layers)

    def as_params(self) -> dict[str, str]:
        """One MLflow param per layer: ``conv_plan.c1.conv`` -> ``train=im2col-gemm infer=pytorch``."""
        return {f"conv_plan.{name}": f"train={p.train} infer={p.infer}" for name, p in self.layers.items()}

    def describe(self) -> str:
        """The plan as a few lines for a stage's log."""
        head = f"convolution plan ({self.setting}, {self.precision} on {self.device}, {self.input_size} px):"
        return "\n".join([head] + [f"  {name:8s} train: {p.train:22s} infer: {p.infer}"
                                   for name, p in self.layers.items()])

    def convolutions(self, mode: str) -> dict[str, str]:
        """``{layer: implementation}`` of the convolutions in a ``mode`` (``train``, ``infer``) pass."""
        return {name: getattr(p, mode) for name, p in self.layers.items() if p.kind == "conv"}

    def with_layer(self, name: str, plan: LayerPlan) -> "Plan":
        """This plan with layer ``name`` computed as ``plan`` (benchmarks force an implementation)."""
        if name not in self.layers:
            raise ValueError(f"no layer {name!r} in the plan; allowed: {', '.join(self.layers)}")
        return Plan(self.setting, self.precision, self.device, self.input_size, self.layers | {name: plan})


def make_plan(module: nn.Module, compute: Compute, input_size: int, setting: str = "auto") -> Plan:
    """The plan of ``module``'s :class:`~fmnist.conv.layers.Conv2d` and
    :class:`~fmnist.conv.layers.MaxPool2d` layers on ``input_size`` px images under ``compute``;
    reads only the layers' shapes (``module`` may live on the meta device)."""
    if setting not in SETTINGS:
        raise ValueError(f"model.conv={setting!r} is not allowed; allowed: one of {', '.join(map(repr, SETTINGS))}")
    layers = {}
    for name, layer, side in map_sides(module, input_size):
        if isinstance(layer, Conv2d):
            geometry = Geometry.of(layer, side)
            layers[name] = LayerPlan("conv", *(choose(geometry, compute, mode, setting) for mode in MODES))
        elif isinstance(layer, MaxPool2d):
            pool = "layout-aware" if setting == "auto" and compute.device == "cpu" else "pytorch"
            layers[name] = LayerPlan("pool", pool, pool)
    return Plan(setting, compute.precision, compute.device, input_size, layers)


def set_plan(module: nn.Module, plan: Plan) -> nn.Module:
    """Store ``plan`` on ``module``'s layers (and the whole of it on ``module``); returned for chaining."""
    planned = {name: layer for name, layer in module.named_modules() if isinstance(layer, (Conv2d, MaxPool2d))}
    if planned.keys() != plan.layers.keys():
        raise ValueError(f"the plan names layers {sorted(plan.layers)}, the module has {sorted(planned)}")
    for name, layer in planned.items():
        layer_plan = plan.layers[name]
        implementations = CONV_IMPLEMENTATIONS if isinstance(layer, Conv2d) else POOL_IMPLEMENTATIONS
        for impl in (layer_plan.train, layer_plan.infer):
            if impl not in implementations:
                raise ValueError(f"{name}: no implementation {impl!r}; allowed: {', '.join(implementations)}")
        layer.plan = layer_plan
    module.conv_plan = plan
    return module


def plan_of(module: nn.Module) -> Plan | None:
    """The plan last set on ``module``; none where it was never planned (every layer PyTorch's)."""
    return getattr(module, "conv_plan", None)


def plan_model(module: nn.Module, compute: Compute, input_size: int, setting: str | None = None) -> Plan:
    """Plan ``module`` for ``compute`` on ``input_size`` px images and store the plan on its layers;
    ``setting`` (``auto``, ``pytorch``) defaults to the one it was planned with before, else auto.
    A module planned alike already keeps its plan."""
    current = plan_of(module)
    setting = setting or (current.setting if current else "auto")
    if current and (current.setting, current.precision, current.device, current.input_size) == (
            setting, compute.precision, compute.device, input_size):
        return current
    plan = make_plan(module, compute, input_size, setting)
    set_plan(module, plan)
    return plan
