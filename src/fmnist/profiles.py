"""Named param profiles (``profiles/<name>.yaml``): partial overrides of ``params.yaml``.

    python -m fmnist.profiles notebook               # prints -S overrides for `dvc exp run`
    python -m fmnist.profiles tiny --write params.yaml   # merges the profile into a params file
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from fmnist.params import flatten, parse_params


def load_profile(name: str, root: Path = Path(".")) -> dict:
    path = root / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise SystemExit(f"error: no profile {name!r}; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text()) or {}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_args(profile: dict) -> list[str]:
    """``-S key=value`` arguments for ``dvc exp run`` (values in JSON, which DVC's parser reads)."""
    args = []
    for key, value in flatten(profile).items():
        args += ["-S", f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--write", metavar="PARAMS", help="merge the profile into this params file")
    args = p.parse_args()
    profile = load_profile(args.name)
    if args.write:
        path = Path(args.write)
        merged = merge(yaml.safe_load(path.read_text()), profile)
        parse_params(merged)  # refuse to write a params file the stages would reject
        path.write_text(yaml.safe_dump(merged, sort_keys=False))
    else:
        print(" ".join(set_args(profile)))


if __name__ == "__main__":
    main()
