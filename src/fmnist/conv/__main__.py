"""Print the convolution plan of each model in each precision on the CPU, as the rules table makes it.

    python -m fmnist.conv             # Markdown tables (the documentation's architecture page holds them)
"""

from __future__ import annotations

import argparse

import torch

from fmnist.compute import Compute
from fmnist.conv.plan import MODES, make_plan


def plan_tables() -> str:
    """One Markdown table per model: a row per layer, a column per precision and pass."""
    from fmnist.model import MODELS  # the model imports this package

    out = []
    for name, cls in MODELS.items():
        with torch.device("meta"):
            module = cls()
        plans = {precision: make_plan(module, Compute("cpu", precision), module.input_size)
                 for precision in ("fp32", "bf16")}
        columns = [(precision, mode) for precision in plans for mode in MODES]
        out.append(f"{name} at {module.input_size} px:\n")
        out.append("| layer | " + " | ".join(f"{precision} {mode}" for precision, mode in columns) + " |")
        out.append("|---" * (len(columns) + 1) + "|")
        for layer in plans["fp32"].layers:
            cells = [getattr(plans[precision].layers[layer], mode) for precision, mode in columns]
            out.append(f"| {layer} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m fmnist.conv", description=__doc__.splitlines()[0]).parse_args(argv)
    print(plan_tables())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
