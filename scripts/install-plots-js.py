"""Offline `dvc plots show`: vega, vega-lite and vega-embed from the npm registry, inlined in a page.

    python scripts/install-plots-js.py              # writes plot-templates/offline.html, sets
                                                    # plots.html_template in .dvc/config.local
    python scripts/install-plots-js.py --no-config  # only writes the page

DVC's own page loads the three libraries from a CDN, so behind a firewall or offline it shows no
charts. This fetches pinned releases with `npm pack` (npm's cache makes a second run offline),
checks each tarball against its pinned sha512, and inlines their browser builds into
``plot-templates/page.html``. The result is one self-contained page: it also works when
``dvc_plots/index.html`` is mailed or opened on another machine. The DVC setting goes into this
clone's ``.dvc/config.local`` (not in git), so a clone without the page keeps DVC's default.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKELETON = ROOT / "plot-templates" / "page.html"
PAGE = ROOT / "plot-templates" / "offline.html"
MARKER = "<!-- @vega-scripts@ -->"

# The majors DVC's own page uses (vega 5, vega-lite 5, vega-embed 6: its templates are vega-lite v5
# specs), at their last releases; the sha512 is npm's dist.integrity of each tarball.
PACKAGES = {
    "vega": ("5.33.1",
             "1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="),
    "vega-lite": ("5.23.0",
                  "l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="),
    "vega-embed": ("6.29.0",
                   "PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="),
}


def fetch(folder: Path) -> dict[str, str]:
    """``name -> minified browser build`` of each package, from tarballs checked against PACKAGES."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("error: npm not found; install Node.js (Debian: apt-get install npm)")
    specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
    result = subprocess.run([npm, "pack", "--silent", "--prefer-offline", *specs], cwd=folder,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: npm pack {' '.join(specs)} failed: {result.stderr.strip()[-2000:]}")
    scripts = {}
    for name, (version, sha512) in PACKAGES.items():
        tarball = folder / f"{name}-{version}.tgz"
        digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != sha512:
            raise SystemExit(f"error: {tarball.name} has sha512 {digest}, expected {sha512}")
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(f"package/build/{name}.min.js")
            scripts[name] = member.read().decode("utf-8")
    return scripts


def page(scripts: dict[str, str]) -> str:
    skeleton = SKELETON.read_text(encoding="utf-8")
    if MARKER not in skeleton or "{plot_divs}" not in skeleton:
        raise SystemExit(f"error: {SKELETON} must contain {MARKER} and {{plot_divs}}")
    tags = []
    for name, js in scripts.items():
        # "</script" inside the code would end the tag early; "<\/" means the same in JS strings.
        js = js.replace("</script", "<\\/script")
        tags.append(f"<script>/* {name}@{PACKAGES[name][0]} from the npm registry */\n{js}\n</script>")
    return skeleton.replace(MARKER, "\n".join(tags))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-config", action="store_true", help="do not set plots.html_template")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        html = page(fetch(Path(tmp)))
    tmp_page = PAGE.with_suffix(".html.tmp")
    tmp_page.write_text(html, encoding="utf-8")
    os.replace(tmp_page, PAGE)  # atomic: DVC never reads half a page
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(html) // 1024} KiB; "
          + ", ".join(f"{n}@{v}" for n, (v, _) in PACKAGES.items()) + ")")
    if not args.no_config:
        # DVC resolves a relative plots.html_template from the .dvc/ folder.
        relative = os.path.relpath(PAGE, ROOT / ".dvc")
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "plots.html_template", relative],
                       cwd=ROOT, check=True)
        print(f"set plots.html_template = {relative} in .dvc/config.local: `dvc plots show` works offline")


if __name__ == "__main__":
    main()
