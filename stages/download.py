"""Stage download: the four Fashion-MNIST IDX files, checksum-verified, into data/raw/.

    python stages/download.py --out data/raw

Reads params ``download.sources`` (folders and mirror URLs, tried in order) and
``download.timeout_s``. Writes the decompressed IDX files; their content is verified by SHA-256,
so a mirror that re-compresses them (as Debian's dataset-fashion-mnist does) is fine.
"""

from fmnist import stage
from fmnist.data import fetch
from fmnist.params import load_params


def main() -> None:
    args = stage.parser(__doc__, out="data/raw").parse_args()
    params = load_params(args.params).download
    fetch(params.sources, args.out, params.timeout_s)


if __name__ == "__main__":
    stage.run(main)
