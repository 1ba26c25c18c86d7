"""The fault probe: part of the tiny DAG made again while its jobs and its main
Snakemake process are SIGKILLed at several moments, each time unlocked and
run on; the tables (all but the cost tables, which hold wall times) and every
remade output must equal the uninterrupted tiny run's byte for byte.

It shares the tiny run's outputs: a copy of its folder loses one mode's
samples of a weak class and one retraining run on them, and that short chain
is made again (the sampling job, its filter, the run: a killed sampling job
keeps its images, a killed retraining run resumes at its epoch checkpoint)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import REPO, SNAKEMAKE, TINY

MODE, CLS = "ti_i2i", "triangle"
# (what is killed, after how many jobs of the attempt finished): a running job
# (the attempt then ends: no --keep-going), or the main process with every job
# it started; each attempt resumes what the last left
KILLS = [("job", 0), ("main", 1), ("job", 1), ("main", 0), ("job", 1)]
# made again in the probe and compared byte for byte with the clean run's
TARGET = f"results/retrain/{MODE}/seed0/metrics.json"
COMPARED = [f"samples/{MODE}/{CLS}/samples.csv", f"samples/{MODE}/{CLS}/filtered.csv", f"samples/{MODE}/{CLS}/images/*",
            f"retrain/{MODE}/seed0/metrics.json", f"retrain/{MODE}/seed0/predictions.csv"]

def _command(wd: Path, *args: str) -> list[str]:
    return [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "2", "--max-threads", "1",
            "--rerun-incomplete", *args, "--configfile", str(TINY)]


def _run(wd: Path, *args: str) -> list[str]:
    return _command(wd, *args, TARGET)


def _children(pid: int) -> dict[int, int]:
    """{pid: parent pid} of every process (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _running_job(main: int) -> int | None:
    """A job's script process under the main Snakemake process, or None."""
    parents = _children(main)
    below, grew = {main}, True
    while grew:
        more = {p for p, pp in parents.items() if pp in below} - below
        below |= more
        grew = bool(more)
    for p in sorted(below - {main}):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if ".snakemake/scripts/" in cmd:
            return p
    return None


def _attempt(wd: Path, kill: tuple[str, int] | None) -> tuple[int, str, bool]:
    """One run of the workflow; with `kill`, SIGKILL a running job or the whole
    main process group once `kill[1]` jobs of this run have finished. (return
    code, its log, whether the kill happened)."""
    p = subprocess.Popen(_run(wd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    killed = False
    while kill and p.poll() is None and not killed:
        time.sleep(0.1)
        if sum(bool(re.match(r"Finished job", s)) for s in list(lines)) < kill[1]:
            continue
        if kill[0] == "main":
            os.killpg(p.pid, signal.SIGKILL)
            killed = True
        elif (job := _running_job(p.pid)) is not None:
            os.kill(job, signal.SIGKILL)
            killed = True
    p.wait(timeout=900)
    reader.join(timeout=30)
    return p.returncode, "".join(lines), killed


def test_the_tiny_dag_killed_again_and_again_ends_as_a_clean_run(tiny_run, tmp_path):
    clean, _ = tiny_run
    wd = tmp_path / "probe"
    shutil.copytree(clean, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    # the mode's samples of the class and one run that reads them
    res = wd / "results"
    shutil.rmtree(res / "samples" / MODE / CLS)
    shutil.rmtree(res / "retrain" / MODE / "seed0")
    kills = []
    for kill in KILLS:
        rc, log, killed = _attempt(wd, kill)
        kills.append((kill, killed, rc))
        if not killed:  # the run ended before the moment: nothing left to kill
            assert rc == 0, log[-4000:]
            break
        assert rc != 0, f"{kill}: the run survived its kill\n{log[-3000:]}"
        subprocess.run(_command(wd, "--unlock"), check=True, capture_output=True)
    assert sum(k for _, k, _ in kills) >= 3, kills  # the DAG was cut at three moments at least
    rc, log, _ = _attempt(wd, None)
    assert rc == 0, log[-4000:]
    n = 0
    for pattern in COMPARED:
        made = sorted(p.relative_to(wd) for p in (wd / "results").glob(pattern))
        assert made, pattern
        for rel in made:
            assert (wd / rel).read_bytes() == (clean / rel).read_bytes(), f"{rel} differs from the clean run's"
            n += 1
    assert n >= 8
    # nothing left to do, and no half-made state left behind
    dry = subprocess.run(_run(wd, "-n"), capture_output=True, text=True)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-2000:]
    assert not list((wd / "results" / "retrain").glob("*/seed*/resume/*"))
