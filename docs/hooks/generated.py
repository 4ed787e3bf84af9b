"""mkdocs hook: the tables that must match the code, generated at build time from the files they describe.

A page asks for a table with a marker line; the build replaces it:

- ``<!-- generated: params -->``: every key of ``params.yaml`` with its default, its range and what
  reruns when it changes, from ``params.schema.json`` (made from the params models by
  ``fmnist-params --schema``), ``params.yaml`` and ``dvc.yaml``.
- ``<!-- generated: train-benchmark -->``: the figures of ``benchmarks/results/train.txt``, the
  committed output of ``python benchmarks/train.py``.
- ``<!-- generated: results -->``: the committed run's metrics (``metrics/*.json``).

It also adds the committed pipeline plots (``plots/evaluate/*.png``) to the site, so that pages can
show them at the same paths the README uses. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.MULTILINE)
# Pipeline outputs committed to git that the pages show (dvc.yaml declares them; tests/test_docs.py
# checks that every picture a page shows is produced by the pipeline or a documented command).
PLOTS = ("plots/evaluate/curves.png", "plots/evaluate/confusion_matrix.png",
         "plots/evaluate/mistakes.png", "plots/search.png")


class GeneratedError(RuntimeError):
    """A generated table cannot be made; the message names the file."""


# -- params ---------------------------------------------------------------------------------------

def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        return schema["$defs"][ref.rsplit("/", 1)[-1]]
    return node


def _number(v: float | int) -> str:
    return f"{v:,}" if isinstance(v, int) and abs(v) >= 10_000 else f"{v:g}" if isinstance(v, float) else str(v)


def allowed(node: dict, schema: dict) -> str:
    """What a value may be, in words, from one JSON Schema property."""
    node = _resolve(schema, node)
    if "enum" in node:
        return ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "array":
        inner = allowed(node.get("items", {}), schema)
        return f"a non-empty list of: {inner}" if node.get("minItems") else f"a list of: {inner}"
    if kind == "boolean":
        return "`true`, `false`"
    if kind == "string":
        if "pattern" in node and node["pattern"].startswith("^$|"):
            return '`""` or an address `host:port`'
        return "a non-empty string" if node.get("minLength") or node.get("pattern") == r"\S" else "a string"
    words = {"integer": "an integer", "number": "a number"}.get(kind, kind or "a value")
    parts = []
    if "minimum" in node:
        parts.append(f">= {_number(node['minimum'])}")
    if "exclusiveMinimum" in node:
        parts.append(f"> {_number(node['exclusiveMinimum'])}")
    if "maximum" in node:
        parts.append(f"<= {_number(node['maximum'])}")
    if "exclusiveMaximum" in node:
        parts.append(f"< {_number(node['exclusiveMaximum'])}")
    if node.get("not", {}).get("const") is not None:
        parts.append(f"not {node['not']['const']}")
    return f"{words} {', '.join(parts)}" if parts else words


def param_rows(schema: dict, prefix: str = "", node: dict | None = None) -> list[tuple[str, dict]]:
    """(dotted key, schema property) for every leaf key, in the models' order."""
    node = _resolve(schema, node if node is not None else schema)
    rows: list[tuple[str, dict]] = []
    for name, prop in node.get("properties", {}).items():
        key = f"{prefix}.{name}" if prefix else name
        target = _resolve(schema, prop)
        if target.get("type") == "object" and "properties" in target:
            rows += param_rows(schema, key, target)
        else:
            rows.append((key, prop))
    return rows


def reruns(dvc: dict) -> Callable[[str], tuple[list[str], list[str]]]:
    """A function from a dotted params key to (the stages whose dvc.yaml ``params`` name the key or a
    section holding it, the stages downstream of them). The first rerun when the key changes; the
    second rerun where an output they depend on changes (DVC compares dependencies by hash)."""
    stages = dvc["stages"]

    def outs(stage: dict) -> list[str]:
        found = []
        for section in ("outs", "metrics", "plots"):
            for out in stage.get(section, []):
                found.append(next(iter(out)) if isinstance(out, dict) else out)
        return found

    def downstream(name: str) -> list[str]:
        produced = outs(stages[name])
        return [other for other, stage in stages.items()
                if any(dep == out or dep.startswith(out.rstrip("/") + "/") for dep in stage.get("deps", [])
                       for out in produced)]

    def closure(start: set[str]) -> list[str]:
        seen, todo = set(start), list(start)
        while todo:
            for nxt in downstream(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return [name for name in stages if name in seen]  # in pipeline order

    def rerun(key: str) -> tuple[list[str], list[str]]:
        parts = key.split(".")
        prefixes = {".".join(parts[:n]) for n in range(1, len(parts) + 1)}
        readers = {name for name, stage in stages.items()
                   if any(isinstance(entry, str) and entry in prefixes for entry in stage.get("params", []))}
        return [n for n in stages if n in readers], [n for n in closure(readers) if n not in readers]

    return rerun


def params_table(root: Path = ROOT) -> str:
    schema = json.loads((root / "params.schema.json").read_text())
    values = yaml.safe_load((root / "params.yaml").read_text())
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    rerun = reruns(dvc)
    lines = ["| key | default | allowed | what it does | reruns when it changes |", "| --- | --- | --- | --- | --- |"]
    for key, prop in param_rows(schema):
        value: object = values
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        readers, after = rerun(key)
        stages = ", ".join(f"**{name}**" for name in readers) or "nothing (no stage reads it)"
        if after:
            stages += "; then " + ", ".join(after) + " where an output changes"
        described = _resolve(schema, prop).get("description", "").replace("|", "\\|").replace("\n", " ")
        shown = json.dumps(value) if not isinstance(value, str) else (f'`"{value}"`' if value == "" else f"`{value}`")
        if not isinstance(value, str):
            shown = f"`{shown}`" if len(shown) <= 40 else "see `params.yaml`"
        lines.append(f"| `{key}` | {shown} | {allowed(prop, schema)} | {described} | {stages} |")
    return "\n".join(lines)


# -- benchmarks -----------------------------------------------------------------------------------

VARIANT = re.compile(r"^\((?P<id>\w+)\) (?P<what>.+?) \[(?P<precision>\w+); fast paths: (?P<paths>[^\]]*)\]$")
RATE = re.compile(r"^\s+(?P<rate>[\d,]+) images/s\s+(?P<fraction>[\d.]+)% of the (?P<peak>\w+) matmul peak"
                  r"(?: \((?P<gflops>\d+) GFLOP/s right after it\))?.*?peak memory\s+(?P<mb>\d+) MB")


def train_benchmark_table(root: Path = ROOT) -> str:
    path = root / "benchmarks" / "results" / "train.txt"
    text = path.read_text()
    lines = text.splitlines()
    head = [line for line in lines if line.startswith(("machine:", "matmul ", "training:"))]
    rows = ["| variant | precision | images/s | of the matmul peak | peak memory | convolution paths |",
            "| --- | --- | --- | --- | --- | --- |"]
    for line, nxt in zip(lines, lines[1:]):
        variant, rate = VARIANT.match(line), RATE.match(nxt)
        if variant and rate:
            rows.append(f"| ({variant['id']}) {variant['what']} | {variant['precision']} | {int(rate['rate'].replace(',', '')):,} | "
                        f"{rate['fraction']}% | {int(rate['mb']):,} MB | {variant['paths'].replace(',', ', ')} |")
    if len(rows) == 2:
        raise GeneratedError(f"{path.relative_to(root)}: no variant rows found (expected lines like "
                             "'(b) ... [bf16; fast paths: ...]' followed by '... images/s ...% of the ... peak')")
    evaluate = re.search(r"^evaluate: (\d+) images/s.*$", text, re.MULTILINE)
    out = ["```text", *head, "```", "", *rows]
    if evaluate:
        out += ["", f"Prediction (evaluate, batched, no gradients): {int(evaluate[1]):,} images/s."]
    headline = [line for line in lines if re.match(r"^\w+=\S+( \w+=\S+)+$", line)]
    if headline:
        out += ["", "The file's last line, for scripts:", "", "```text", headline[-1], "```"]
    return "\n".join(out)


# -- results --------------------------------------------------------------------------------------

def results_table(root: Path = ROOT) -> str:
    evaluate = json.loads((root / "metrics" / "evaluate.json").read_text())
    train = json.loads((root / "metrics" / "train.json").read_text())
    per_class = evaluate.get("per_class", {})
    hardest = min(per_class, key=lambda c: per_class[c]["f1"]) if per_class else None
    rows = ["| | |", "| --- | --- |",
            f"| test accuracy | **{evaluate['test_accuracy'] * 100:.2f}%** |",
            f"| test macro F1 | {evaluate['test_macro_f1']:.3f} |",
            f"| best validation accuracy | {train['best_valid_acc'] * 100:.2f}%, epoch {train['best_epoch']} "
            f"of {train['epochs']} |",
            f"| hyper-parameters (from search) | lr {train['lr']:g}, batch size {train['batch_size']}, "
            f"dropout {train['dropout']:g} |",
            f"| precision | {train['precision']} |"]
    if hardest:
        rows.append(f"| hardest class | {hardest}, F1 {per_class[hardest]['f1']:.3f} |")
    return "\n".join(rows)


GENERATORS = {"params": params_table, "train-benchmark": train_benchmark_table, "results": results_table}


def expand(markdown: str, root: Path = ROOT) -> str:
    def one(match: re.Match) -> str:
        name = match[1]
        if name not in GENERATORS:
            raise GeneratedError(f"unknown generated table {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name](root)
    return MARKER.sub(one, markdown)


# -- mkdocs events --------------------------------------------------------------------------------

def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 (mkdocs' signature)
    return expand(markdown)


def on_files(files, config):
    from mkdocs.structure.files import File

    for rel in PLOTS:
        if not (ROOT / rel).is_file():
            raise GeneratedError(f"{rel}: not found; it is a committed output of the pipeline (dvc repro)")
        files.append(File(rel, src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
