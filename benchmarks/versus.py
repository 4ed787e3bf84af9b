"""The train stage's code at another commit and in this checkout, side by side in one run.

    python benchmarks/versus.py --rev 79a0a52 [--rounds 3] [--images 16384] [--epochs 1] [--precision fp32]

A shared machine's speed drifts by a third within an hour, so a figure from another day is no
baseline. This checks ``--rev`` out into a temporary git worktree and runs variant (b) of
``benchmarks/train.py`` (the train stage's code at the default params: skorch, every callback,
MLflow) on each side's own ``src/``, in turns, round after round, each run in a fresh process.
Both sides run this checkout's script, params.yaml and data/split, so only the code under
``src/`` differs. Prints each run's images/s and fraction of the matmul peak measured right
after it in the same process, then the ratio of the medians; the last line is ``key=value``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def short_rev(rev: str) -> str:
    """``rev`` as git's short commit hash, the name each side is printed under."""
    return subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT,
                          check=True).stdout.strip()


def run_pipeline(src: Path, images: int, valid: int, epochs: int, precision: str) -> dict:
    """Variant (b) of benchmarks/train.py with ``src`` as the fmnist package's source."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--child", "pipeline",
                          str(images), str(valid), str(epochs), *([precision] if precision else [])],
                         capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**os.environ, "FMNIST_BENCH_SRC": str(src), "FMNIST_BENCH_DEVICE": "cpu"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="the commit to compare against (the baseline)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=16_384,
                   help="per epoch (a third of benchmarks/train.py's 55,000: enough for an A/B)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--precision", default="", help="default: model.precision from params.yaml")
    args = p.parse_args()

    from train import flops_per_image, stage_valid_images

    valid = stage_valid_images(args.images)
    flops = flops_per_image()
    rev = short_rev(args.rev)
    runs: dict[str, list[dict]] = {rev: [], "this checkout": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {rev: tree / "src", "this checkout": ROOT / "src"}
            print(f"variant (b) of benchmarks/train.py, {args.images} images x {args.epochs} epochs, validation on "
                  f"{valid}; {args.rounds} rounds, the two in turns")
            for _ in range(args.rounds):
                for name, src in sides.items():
                    r = run_pipeline(src, args.images, valid, args.epochs, args.precision)
                    r["fraction"] = r["images_per_s"] * flops / 1e9 / r["peak_gflops"]
                    runs[name].append(r)
                    print(f"  {name:14s} [{r['precision']}; fast paths: {r['fast_paths']}] {r['images_per_s']:6.0f} "
                          f"images/s  {r['fraction'] * 100:5.1f}% of the matmul peak ({r['peak_gflops']:.0f} GFLOP/s "
                          f"right after it)", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in ("images_per_s", "fraction")}
               for name, rs in runs.items()}
    base, now = medians[rev], medians["this checkout"]
    print(f"medians: {rev} {base['images_per_s']:.0f} images/s ({base['fraction'] * 100:.1f}% of peak), this "
          f"checkout {now['images_per_s']:.0f} ({now['fraction'] * 100:.1f}%): x{now['images_per_s'] / base['images_per_s']:.2f}")
    print(f"rev={rev} precision={runs[rev][0]['precision']} baseline_images_per_s={base['images_per_s']:.0f} "
          f"images_per_s={now['images_per_s']:.0f} speedup={now['images_per_s'] / base['images_per_s']:.2f} "
          f"baseline_peak_fraction={base['fraction']:.3f} peak_fraction={now['fraction']:.3f}")


if __name__ == "__main__":
    main()
