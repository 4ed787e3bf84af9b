"""Named param profiles (``profiles/<name>.yaml``): partial overrides of ``params.yaml``.

    fmnist-profiles notebook                     # prints -S overrides for `dvc exp run`
    fmnist-profiles tiny --write params.yaml     # merges the profile into a params file
    dvc exp run $(fmnist-profiles notebook)      # (or python -m fmnist.profiles notebook)

Exit status (the rule of :mod:`fmnist.errors`): 0 ok, 1 the params file could not be written,
2 an unknown or invalid profile, a params file that is missing or would not validate, or a
wrong command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from fmnist.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ParamsError
from fmnist.files import atomic_open
from fmnist.params import flatten, parse_params


def load_profile(name: str, root: Path = Path(".")) -> dict:
    """The overrides of ``profiles/<name>.yaml``; :class:`ParamsError` for an unknown name."""
    path = root / "profiles" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / "profiles").glob("*.yaml"))
        raise ParamsError(f"no profile {name!r}; known: {', '.join(known)}")
    return _read_yaml(path) or {}


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ParamsError(f"{path}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fmnist-profiles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the profile: profiles/<name>.yaml")
    p.add_argument("--write", metavar="PARAMS", help="merge the profile into this params file instead of "
                                                     "printing -S overrides")
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.name)
        if not args.write:
            print(" ".join(set_args(profile)))
            return EXIT_OK
        path = Path(args.write)
        base = _read_yaml(path)
        if not isinstance(base, dict):
            raise ParamsError(f"{path}: not a params file (a mapping of sections)")
        merged = merge(base, profile)
        parse_params(merged)  # refuse to write a params file the stages would reject
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with atomic_open(path) as f:  # a failed write leaves the file as it was
            f.write(yaml.safe_dump(merged, sort_keys=False))
    except OSError as err:
        print(f"error: {path}: cannot write ({err.strerror})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
