import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: torch in each (before any
    # test imports it) takes one thread, not every core (two workers x 2 threads
    # made a 3-s training take 18 s)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = REPO / "tests" / "configs" / "tiny.yaml"
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


_warm = {}


def warm_client() -> str | None:
    """This worker's warm Python for the jobs' scripts (tests/warm.py), started
    on first use and stopped when the worker exits; None where it cannot start
    or TIBALANCE_TEST_COLD is set (every job a plain process)."""
    if os.environ.get("TIBALANCE_TEST_COLD"):
        return None
    if "client" not in _warm:
        import atexit
        import tempfile

        from warm import ONE_THREAD

        folder = tempfile.mkdtemp(prefix="warm")
        client = os.path.join(folder, "python")
        server = subprocess.Popen([sys.executable, str(REPO / "tests" / "warm.py"), "serve",
                                   os.path.join(folder, "s"), client], stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONUNBUFFERED="1", **ONE_THREAD))
        atexit.register(server.kill)
        _warm["client"] = client if server.stdout.readline().strip() == "ready" else None
    return _warm["client"]


def snakemake(workdir, *args, configfiles=(TINY,), check=True, cores=2):
    """Run the real workflow (repo Snakefile) in `workdir`.

    One thread per job (--max-threads 1, also in the SLURM runs, so their
    results match byte for byte): the tiny DAG's jobs spend their time starting
    Python, so two of them side by side on 2 cores finish twice as fast. A
    local run's script jobs start in this worker's warm Python (tests/warm.py:
    torch, diffusers and the stages imported once, each job a fork); a run on
    an executor (SLURM) starts plain ones."""
    # --configfile takes a list: it goes last so it cannot swallow a target
    threads = [] if "--max-threads" in args else ["--max-threads", "1"]
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           *(["--cores", str(cores)] if cores is not None else []), *threads, *args,
           "--configfile", *[str(c) for c in configfiles]]
    remote = any(str(a).startswith(("--executor", "--profile", "--workflow-profile")) for a in args)
    if not remote and (client := warm_client()):
        cmd = [sys.executable, str(REPO / "tests" / "warm.py"), "snakemake", client, *cmd[1:]]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config run once through the whole DAG; tests read its outputs
    (and copy it before they change anything). Under pytest-xdist (`make test`
    runs two workers) the workers share one run: the first to need it makes it,
    holding a file lock; the other waits for it and reads the same folder."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        wd = tmp_path_factory.mktemp("tiny")
        return wd, snakemake(wd)
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    wd, done = shared / "tiny", shared / "tiny.done"
    with FileLock(str(shared / "tiny.lock")):
        if not done.exists():
            wd.mkdir()
            snakemake(wd)
            done.write_text(worker)
    return wd, None


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`: --dist loadfile, a test file is one unit
    of work) the SLURM cluster's file is queued first and then the files that
    read the tiny run, so that the two long DAG runs start at once on the two
    workers and the other files fill in behind them. Without xdist the file
    order stays."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        def rank(item):
            names = set(getattr(item, "fixturenames", ()))
            return 0 if names & {"cluster", "slurm_run"} else 1 if "tiny_run" in names else 2

        items.sort(key=rank)  # stable: file order within each rank


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """The tiny offline SD pipeline (random weights, real CLIP vocabulary); tests never write to it."""
    from tibalance.tiny import build_tiny

    path = tmp_path_factory.mktemp("sd") / "tiny_sd"
    build_tiny(str(path), {"resolution": 32}, seed=0)
    return str(path)


def pixel_images(folder, n: int, mean, std, seed: int = 0, size: int = 24) -> list[str]:
    """n RGB PNGs in folder (made if missing) whose pixels are drawn per channel
    from normal(mean, std), clipped to 0-255: a class with known pixel statistics."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        px = np.clip(rng.normal(mean, std, (size, size, 3)), 0, 255).astype(np.uint8)
        p = folder / f"real{i}.png"
        Image.fromarray(px).save(p)
        paths.append(str(p))
    return paths


def random_images(folder, n: int, size: int, prefix: str = "", seed: int = 0) -> list[str]:
    """n random RGB PNGs of size x size px in folder: their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="session")
def seed_images(tmp_path_factory):
    """Three random 28 px RGB images standing in for a class's seed images."""
    return random_images(tmp_path_factory.mktemp("seeds"), 3, 28)


@pytest.fixture
def cpu_kind(monkeypatch):
    """cpu_kind(True): a CPU with native bf16; cpu_kind(False): one without (AVX2)."""
    import tibalance.precision as P

    def set_kind(native: bool):
        monkeypatch.setattr(P, "cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(P, "cpu_info", lambda: {"model": "Test CPU", "capability": "AVX512" if native else "AVX2",
                                                    "native_bf16": native})
        P._warned.clear()
        P._resolved.clear()
    yield set_kind
    P._warned.clear()
    P._resolved.clear()


def planned_jobs(output):
    """(rule, wildcards) of each job a dry run lists."""
    jobs, rule = [], None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ")):
            rule = line.split()[1].rstrip(":")
            jobs.append([rule, ""])
        elif line.strip().startswith("wildcards:") and jobs:
            # replicate 0's {rep} is empty: left out ("cls=triangle"; lora_shared's ""), a replicate's kept
            # ("cls=triangle, rep=/rep1")
            w = line.split(":", 1)[1].strip().removesuffix(", rep=")
            jobs[-1][1] = "" if w == "rep=" else w
    return [tuple(j) for j in jobs]


def job_block(output, rule):
    """The lines a dry run prints for the jobs of `rule` (input, output, ...)."""
    blocks, keep = [], False
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ")):
            keep = line.split()[1].rstrip(":") == rule
        elif not line.strip():
            keep = False
        if keep:
            blocks.append(line)
    return "\n".join(blocks)
