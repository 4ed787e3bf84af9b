"""The README and the documentation site stay true to the tree.

- the site builds with ``mkdocs build --strict`` (offline: no web fonts, no plugin that fetches);
- the README is a front page (at most 12 KB) whose results are the committed metrics;
- every path, make target, ``python -m`` module, params key and command-line flag that the README
  and the docs name in code exists: paths in the tree or as a ``dvc.yaml`` output, targets in the
  Makefile, modules under ``src/``, keys in the params models, flags in the argparse definitions of
  the command they follow;
- every picture they show is produced by the pipeline (a ``dvc.yaml`` output) or by a script the
  docs name, and nothing else sits in ``docs/img``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)
FILES = [ROOT / "README.md", *PAGES]
README_LIMIT = 12 * 1024

# Places a run or a tool makes that neither git nor dvc.yaml holds: the local MLflow store, DVC's
# own folders and the team stack's state, the offline plots page (scripts/install-plots-js.py).
RUNTIME = ("mlflow.db", "mlartifacts", ".dvc", ".team", "dvc_plots", "plot-templates/offline.html", "site")
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


# -- reading the docs -------------------------------------------------------------------------------

def code_of(text: str) -> tuple[list[str], list[str]]:
    """(the inline code spans, the lines of the fenced code blocks) of a Markdown text."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("", text)
    spans = SPAN.findall(prose)
    lines = []
    for block in blocks:
        lines += block.replace("\\\n", " ").splitlines()
    return spans, lines


def all_code() -> list[tuple[Path, str]]:
    out = []
    for path in FILES:
        spans, lines = code_of(path.read_text())
        out += [(path, s) for s in spans] + [(path, line) for line in lines]
    return out


def where(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- what exists ----------------------------------------------------------------------------------

def dvc_outputs() -> list[str]:
    outs = []
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                outs.append(next(iter(out)) if isinstance(out, dict) else out)
    return outs


def is_output(rel: str) -> bool:
    rel = rel.rstrip("/")
    return any(rel == out.rstrip("/") or rel.startswith(out.rstrip("/") + "/") for out in dvc_outputs())


def top_level() -> set[str]:
    names = {p.name for p in ROOT.iterdir()} | {out.split("/")[0] for out in dvc_outputs()}
    return names - {".git"}


def path_exists(rel: str) -> bool:
    rel = rel.rstrip("/")
    if any(rel == r or rel.startswith(r + "/") for r in RUNTIME):
        return True
    return (ROOT / rel).exists() or is_output(rel)


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.MULTILINE))


def schema_keys() -> set[str]:
    schema = json.loads((ROOT / "params.schema.json").read_text())

    def walk(node: dict, prefix: str) -> set[str]:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        keys = {prefix} if prefix else set()
        for name, prop in node.get("properties", {}).items():
            keys |= walk(prop, f"{prefix}.{name}" if prefix else name)
        return keys

    return walk(schema, "")


def module_file(module: str) -> Path | None:
    """The source of ``python -m module`` (a package's ``__main__``), for modules of this project."""
    base = ROOT / "src" / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def entry_points() -> dict[str, Path]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("scripts", {})
    out = {}
    for name, target in scripts.items():
        path = module_file(target.split(":")[0])
        if path is None:
            path = ROOT / "src" / Path(*target.split(":")[0].split(".")) / "__init__.py"
        out[name] = path
    return out


def defined_flags(source: Path, seen: set[Path] | None = None) -> set[str]:
    """Every ``--flag`` a script or module defines: string literals in it, options made by
    ``stage.parser(doc, name=...)``, and the same in the package modules it imports (so that a
    ``__main__`` that calls a package's ``cli`` counts)."""
    seen = seen if seen is not None else set()
    if source in seen or not source.is_file():
        return set()
    seen.add(source)
    tree = ast.parse(source.read_text())
    flags = {"--help"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            flags |= set(re.findall(r"(?<![\w-])--[a-z][\w-]*", node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "parser":
            flags |= {"--" + kw.arg.replace("_", "-") for kw in node.keywords if kw.arg} | {"--params"}
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fmnist":
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                base = ROOT / "src" / Path(*name.split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py", base / "cli.py"):
                    flags |= defined_flags(candidate, seen)
        if isinstance(node, ast.ImportFrom) and node.level and node.module:  # from .cli import main
            flags |= defined_flags(source.parent / (node.module.replace(".", "/") + ".py"), seen)
    return flags


# -- the site -------------------------------------------------------------------------------------

def test_the_site_builds_strictly_and_offline(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pipeline = (site / "pipeline.html").read_text()
    assert "<!-- generated" not in pipeline and "search.grid.lr" in pipeline  # the params table was made
    assert (site / "plots" / "evaluate" / "curves.png").is_file()
    for page in site.rglob("*.html"):
        html = page.read_text()
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, f"{page}: web fonts"
        fetched = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+", html)
        assert not fetched, f"{page.name} loads from the network: {fetched[:3]}"


def test_every_page_is_in_the_nav():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(nav) -> list[str]:
        out = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += pages(value) if isinstance(value, list) else [value]
        return out

    listed = set(pages(config["nav"]))
    assert listed == {str(p.relative_to(DOCS)) for p in PAGES}


def test_the_generated_tables_fail_loudly_on_a_file_they_cannot_read(tmp_path):
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        import generated
    finally:
        sys.path.remove(str(DOCS / "hooks"))
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "train.txt").write_text("nothing measured\n")
    with pytest.raises(generated.GeneratedError, match="train.txt: no variant rows"):
        generated.train_benchmark_table(tmp_path)
    table = generated.params_table(ROOT)
    for key in sorted(schema_keys()):
        if not any(k.startswith(key + ".") for k in schema_keys()):  # every leaf key has its row
            assert f"| `{key}` |" in table, key


# -- the README -----------------------------------------------------------------------------------

def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= README_LIMIT, f"README.md is {len(text.encode())} bytes; the limit is {README_LIMIT}"
    for command in ("make pipeline", "make test", "dvc repro", "dvc exp run -S", "dvc exp show", "mlflow ui",
                    "make team-up"):
        assert command in text, command


def readme_figure(label: str) -> str:
    match = re.search(rf"^\| {label} \| (.+?) \|$", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert match, f"README.md has no '| {label} |' row"
    return match.group(1)


def test_the_readmes_results_are_the_committed_metrics():
    evaluate = json.loads((ROOT / "metrics" / "evaluate.json").read_text())
    train = json.loads((ROOT / "metrics" / "train.json").read_text())
    numbers = lambda s: [float(x) for x in re.findall(r"\d+(?:\.\d+)?", s)]  # noqa: E731
    decimals = lambda s: [float(x) for x in re.findall(r"\d+\.\d+", s)]  # noqa: E731
    assert numbers(readme_figure("test accuracy"))[0] == round(evaluate["test_accuracy"] * 100, 2)
    f1 = decimals(readme_figure("test macro F1"))
    assert f1[0] == round(evaluate["test_macro_f1"], 3)
    per_class = json.loads((ROOT / "metrics" / "per_class.json").read_text())["per_class"]
    hardest = min(per_class, key=lambda c: per_class[c]["f1"])
    assert hardest in readme_figure("test macro F1") and f1[1] == round(per_class[hardest]["f1"], 3)
    valid = numbers(readme_figure("best validation accuracy"))
    assert valid == [round(train["best_valid_acc"] * 100, 2), train["best_epoch"], train["epochs"]]
    chosen = numbers(readme_figure("chosen by search"))
    assert chosen == [train["lr"], train["batch_size"], train["dropout"]]
    assert train["precision"] in (ROOT / "README.md").read_text().split("## Results")[1].split("|")[0]


# -- names in code ----------------------------------------------------------------------------------

def named_paths() -> list[tuple[Path, str]]:
    """Paths the docs name in code: tokens whose first component is a top-level name of the tree
    and that have a second component or are a file at the root."""
    tops = top_level()
    found = []
    for page, code in all_code():
        for token in re.split(r"[\s`'\"()=,;|>]+", code):
            token = token.rstrip(".:")
            if "://" in token or token.startswith(("-", "$", "<", "~", "/")) or "{" in token or "*" in token:
                continue
            parts = token.split("/")
            if parts[0] in tops and (len(parts) > 1 and parts[1] != "" or (ROOT / token).is_file()
                                     or "." in parts[0] and parts[0] not in ("mlflow.db",)):
                found.append((page, token))
    return found


def test_the_named_paths_exist():
    missing = sorted({f"{where(page)}: {token}" for page, token in named_paths() if not path_exists(token)})
    assert named_paths(), "no path found in the docs: the rule reads nothing"
    assert not missing, "the docs name paths that do not exist:\n" + "\n".join(missing)


def test_the_markdown_links_of_the_readme_exist():
    text = (ROOT / "README.md").read_text()
    links = [link for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link and not link.startswith("#")]
    assert links
    missing = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not missing, missing


def test_the_named_make_targets_exist():
    targets = make_targets()
    named = {(page, t) for page, code in all_code() for t in re.findall(r"(?:^|&&|;|\|)\s*make ([a-z][\w-]*)", code)}
    assert named
    missing = sorted(f"{where(page)}: make {t}" for page, t in named if t not in targets)
    assert not missing, "\n".join(missing)


def test_the_named_python_modules_exist():
    named = {(page, m) for page, code in all_code() for m in re.findall(r"python -m (fmnist[\w.]*)", code)}
    assert named
    def runnable(module: str) -> bool:
        source = module_file(module)
        return source is not None and (source.name == "__main__.py" or "__name__ == \"__main__\"" in source.read_text())

    missing = sorted(f"{where(page)}: python -m {m}" for page, m in named if not runnable(m))
    assert not missing, "\n".join(missing)


SECTIONS = ("download", "split", "resize", "model", "search", "train", "evaluate", "tracking")
KEY = re.compile(rf"(?<![\w.'/-])((?:{'|'.join(SECTIONS)})(?:\.(?:[a-z_]\w*|\*))+)(?![\w/(-])")
NOT_KEYS = (".py", ".json", ".md", ".png", ".yaml", ".txt", ".csv", ".pt", ".html")


def test_the_named_params_keys_exist():
    keys = schema_keys()
    named = set()
    for page, code in all_code():
        for key in KEY.findall(code):
            if key.endswith(NOT_KEYS):
                continue
            named.add((page, key))
    assert any(key == "train.max_epochs" for _, key in named)
    missing = sorted(f"{where(page)}: {key}" for page, key in named
                     if (key[:-2] if key.endswith(".*") else key) not in keys)
    assert not missing, "the docs name params keys that params.yaml does not have:\n" + "\n".join(missing)


COMMAND = re.compile(r"(?:^|[\s;&|(])(?:python3? )?((?:stages|scripts|benchmarks)/[\w-]+\.py|-m fmnist[\w.]*|"
                     r"fmnist-[a-z]+)((?:\s+(?![;&|#]).*?)?)(?=$|\s[;&|]|\s#|\s>)")


def test_the_named_command_line_flags_exist():
    commands = entry_points()
    checked, missing = 0, []
    for page, code in all_code():
        for command, args in COMMAND.findall(code):
            if command.startswith("-m "):
                source = module_file(command[3:])
            elif command.startswith("fmnist-"):
                source = commands.get(command)
                if source is None:
                    missing.append(f"{where(page)}: {command} is not an entry point of pyproject.toml")
                    continue
            else:
                source = ROOT / command
            if source is None or not source.is_file():
                continue  # a missing module or script is reported by the tests above
            flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", args.split(" -- ")[0]))
            if not flags:
                continue
            defined = defined_flags(source)
            checked += 1
            missing += [f"{where(page)}: {command} {flag}" for flag in sorted(flags - defined)]
    assert checked, "no command with flags found in the docs: the rule reads nothing"
    assert not missing, "the docs name flags that the command does not define:\n" + "\n".join(sorted(set(missing)))


# -- pictures -------------------------------------------------------------------------------------

def pictures() -> list[tuple[Path, str]]:
    """(page, picture path from the repository root) of every image the README and docs show."""
    shown = []
    for page in FILES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", page.read_text()):
            rel = (page.parent / target).resolve()
            if not rel.exists() and page.parent == DOCS:  # the site's copies of pipeline plots (docs/hooks)
                rel = (ROOT / target).resolve()
            shown.append((page, str(rel.relative_to(ROOT))))
    return shown


def made_by_documented_script(picture: str) -> str | None:
    """The script under scripts/ whose source names the picture as its output, if the docs name it."""
    text = "\n".join(p.read_text() for p in FILES)
    for script in sorted((ROOT / "scripts").glob("*.py")):
        if picture in script.read_text() and f"scripts/{script.name}" in text:
            return script.name
    return None


def test_every_picture_is_made_by_the_pipeline_or_a_documented_command():
    shown = pictures()
    assert any(p.endswith("curves.png") for _, p in shown)
    orphan = [f"{where(page)}: {picture}" for page, picture in shown
              if not (ROOT / picture).is_file() or not (is_output(picture) or made_by_documented_script(picture))]
    assert not orphan, ("pictures that no dvc.yaml output or documented script makes:\n" + "\n".join(orphan))


def test_nothing_in_docs_img_is_made_by_nothing():
    shown = {picture for _, picture in pictures()}
    for image in sorted((DOCS / "img").glob("*")):
        rel = str(image.relative_to(ROOT))
        assert made_by_documented_script(rel), f"{rel}: no documented script makes it; remove it or document one"
        assert rel in shown, f"{rel}: no page shows it"


def test_the_flags_named_in_prose_belong_to_a_command_on_the_page():
    """A span such as `--invert always` names a flag of a command the page shows: one of this
    project's (its argparse definitions) or another tool's (a command line of the page uses it)."""
    commands = entry_points()
    missing, checked = [], 0
    for page in FILES:
        spans, lines = code_of(page.read_text())
        ours: set[str] = set()
        for code in spans + lines:
            for command, _ in COMMAND.findall(code):
                source = (module_file(command[3:]) if command.startswith("-m ") else
                          commands.get(command) if command.startswith("fmnist-") else ROOT / command)
                if source is not None and source.is_file():
                    ours |= defined_flags(source)
        theirs = {flag for line in lines + spans if re.match(r"\s*(dvc|mlflow|git|pip|dask|curl|mkdocs)\b", line)
                  for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line)}
        for span in spans:
            flag = re.match(r"(--[a-z][\w-]*)", span)
            if flag:
                checked += 1
                if flag.group(1) not in ours | theirs:
                    missing.append(f"{where(page)}: {span}")
    assert checked
    assert not missing, "flags that no command on their page defines or uses:\n" + "\n".join(missing)


@pytest.mark.parametrize("text, kind, name", [
    ("`docs/no-such-page.md`", "path", "docs/no-such-page.md"),
    ("```bash\nmake no-such-target\n```", "target", "no-such-target"),
    ("`train.no_such_key`", "key", "train.no_such_key"),
    ("```bash\nfmnist-predict --no-such-flag x.png\n```", "flag", "--no-such-flag"),
])
def test_the_rules_find_what_does_not_exist(text, kind, name):
    """The rules above, on a page that names something missing: each finds it, and it is missing."""
    spans, lines = code_of(text)
    code = spans + lines
    if kind == "path":
        assert code == [name] and not path_exists(name)
    elif kind == "target":
        assert re.findall(r"(?:^|&&|;|\|)\s*make ([a-z][\w-]*)", code[0]) == [name] and name not in make_targets()
    elif kind == "key":
        assert KEY.findall(code[0]) == [name] and name not in schema_keys()
    else:
        (command, args), = COMMAND.findall(code[0])
        assert name in args and name not in defined_flags(entry_points()[command])
