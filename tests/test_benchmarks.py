"""benchmarks/stages.py: the per-stage time and memory figures in the README come from it."""

import subprocess
import sys
import textwrap
from pathlib import Path

WATCHER = Path(__file__).resolve().parents[1] / "benchmarks" / "stages.py"


def watch(tmp_path: Path, command: str) -> tuple[int, dict[str, float]]:
    out = subprocess.run([sys.executable, str(WATCHER), "--interval", "0.1", "--", "sh", "-c", command],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    figures = dict(pair.split("=") for pair in out.stdout.strip().splitlines()[-1].split()) if "=" in out.stdout else {}
    return out.returncode, {k: float(v) for k, v in figures.items()}


def test_stage_watcher_reports_each_stage_with_its_workers_memory(tmp_path):
    (tmp_path / "stages").mkdir()
    # a stage whose spawned worker holds 300 MB while the stage itself holds 100 MB
    (tmp_path / "stages" / "big.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, time
        def hold(mb):
            block = bytearray(mb << 20)
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(1.5)
        if __name__ == "__main__":
            worker = mp.get_context("spawn").Process(target=hold, args=(300,))
            worker.start()
            hold(100)
            worker.join()
    """))
    (tmp_path / "stages" / "small.py").write_text("import time; time.sleep(0.5)\n")
    code, figures = watch(tmp_path, "python stages/big.py && python stages/small.py")
    assert code == 0
    assert figures["big_peak_mb"] >= 400, figures  # the stage and its worker, summed
    assert figures["small_peak_mb"] < 100, figures
    assert figures["big_min"] * 60 >= 1.0 and figures["small_min"] * 60 >= 0.3, figures


def test_stage_watcher_passes_on_the_commands_exit_status(tmp_path):
    code, _ = watch(tmp_path, "exit 3")
    assert code == 3
