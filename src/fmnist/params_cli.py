"""``fmnist-params``: check a params file without running anything, or print the JSON Schema.

    fmnist-params                      # checks params.yaml: "params.yaml: ok", or one error line
    fmnist-params other.yaml
    fmnist-params --schema > params.schema.json

Exit status (the rule of :mod:`fmnist.errors`): 0 the file is valid, 2 it is not (or the
command line is wrong).
"""

from __future__ import annotations

import argparse
import sys

from fmnist.errors import EXIT_OK, EXIT_USAGE, ParamsError
from fmnist.params import load_params
from fmnist.params_schema import SCHEMA_FILE, schema_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fmnist-params", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("params", nargs="?", default="params.yaml", help="the params file to check (default: %(default)s)")
    p.add_argument("--schema", action="store_true", help=f"print the JSON Schema (what {SCHEMA_FILE} holds)")
    args = p.parse_args(argv)
    if args.schema:
        print(schema_text(), end="")
        return EXIT_OK
    try:
        load_params(args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{args.params}: ok")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
