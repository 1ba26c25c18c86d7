"""A warm Python for the DAG tests' jobs (test support, not the workflow's).

The tiny studies' jobs do little work: most of a job's time is Python
importing torch, torchvision, diffusers and transformers (~3 s a job on 2
cores, ~120 jobs in the shared tiny run). Here one server process per test
worker imports them once; each job's script then runs in a fork of it:

    snakemake (main) -> bash -> client <script.py>  ==socket==>  server
                                                                   `- supervisor -> job (the script)

- The job is the same script Snakemake wrote (its preamble, the pickled
  `snakemake` object, the stage code), with the client's working folder,
  environment, argv and stdin/stdout/stderr (passed over the socket). Its exit
  status is the client's; a killed client (Snakemake stopping a job) kills
  the job.
- The server forks only from its one thread (a supervisor per job, which forks
  the job and waits for it), so no lock of another thread is inherited. It
  runs no computation, so the job's thread pools start in the job.
- Anything the server cannot stand in for runs as a plain process: a command
  that is not a Python script (`python -m snakemake` for a group job), an
  environment that differs from the server's in what imports read (torch's
  ISA and thread settings, PYTHON*), a server that is not there.

What a warm job does not give: Snakemake's benchmark files measure the
client's process tree, so their CPU time and memory are the client's (the wall
time is the job's); the job's own CPU count (its sidecar's `cpu_seconds`)
leaves out the imports the server made. The SLURM tests and the fault probe
run their jobs as plain processes, and the probe compares its plainly remade
outputs with the warm tiny run's byte for byte.

    python tests/warm.py serve <socket> <client>  # the server; it writes <client> (conftest starts it)
    python tests/warm.py snakemake <client> ARGS  # snakemake, its script jobs through <client>
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys

# what the server's imports read from the environment: a job whose values
# differ runs as a plain process. The thread counts among them (Snakemake sets
# them per job from its threads; OpenBLAS reads its own when numpy loads it):
# the server is started with one thread each, the tests' jobs' count. The hubs'
# offline switches are not compared: every job but a fetch sets them before it
# imports a hub library (tibalance.smk.run), so the server imports under them,
# and the fetch rules' scripts run plain.
IMPORT_ENV = ("ATEN_", "ONEDNN_", "DNNL_", "KMP_", "OMP_", "GOTO_", "OPENBLAS_", "MKL_", "VECLIB_", "NUMEXPR_",
              "TORCH", "PYTORCH", "HF_", "TRANSFORMERS", "DIFFUSERS", "PYTHONPATH", "PYTHONHASHSEED")
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")  # tibalance.smk.OFFLINE's keys
PLAIN_SCRIPTS = ("fetch_dataset.py", "fetch_generator.py", "fetch_weights.py")  # online jobs


CLIENT = """#!{python} -SE
# a job's script through the warm server at {sock} (tests/warm.py); a plain Python otherwise
import sys
sys.path.insert(0, {tests!r})
from warm import client
client({python!r}, {sock!r}, {env!r})
"""


def client(python: str, sock: str, env: dict) -> None:
    """The job's process as Snakemake starts it: hand the script to the server
    and exit with its status; exec the plain Python where the server cannot
    stand in (see the module's docstring)."""
    args = sys.argv[1:]
    script = args[0] if args else ""
    if not (script.endswith(".py") and os.path.isfile(script)) or script.endswith(PLAIN_SCRIPTS) \
            or import_env(os.environ) != env:
        os.execv(python, [python, *args])
    fds = []
    for fd in (0, 1, 2):  # a closed one (CI's stdin) handed on as /dev/null
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            fds.append(os.open(os.devnull, os.O_RDWR))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sock)
        req = json.dumps({"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        socket.send_fds(s, [len(req).to_bytes(8, "big") + req], fds)
    except OSError:  # no server: the plain Python
        os.execv(python, [python, *args])
    status = b""
    while chunk := s.recv(64):
        status += chunk
    code = int(status) if status else 1
    if code < 0:  # the job died of a signal: so does this process
        os.kill(os.getpid(), -code)
    sys.exit(code)


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = int.from_bytes(msg[:8], "big")
    body = msg[8:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the client went before its request was read")
        body += chunk
    return json.loads(body), list(fds)


def _job(req: dict, fds: list[int]) -> None:
    """In the job's process: become the client's script and run it."""
    code = 1
    try:
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = list(req["argv"])
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python script.py` sets it
        import runpy

        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:  # sys.exit("message"), as Python itself prints it
                print(e.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _supervise(conn: socket.socket) -> None:
    """In a fork of the server: fork the job, then report its exit status to
    the client, or kill it if the client goes first."""
    import select

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    req, fds = _recv_request(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _job(req, fds)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    while True:
        ready, _, _ = select.select([conn, pidfd], [], [])
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            try:
                conn.sendall(str(os.waitstatus_to_exitcode(status)).encode())
            except OSError:
                pass
            return
        if conn in ready and not conn.recv(1):  # the client is gone
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return


def import_env(env) -> dict:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_ENV) and k not in OFFLINE}


def serve(sock_path: str, client_path: str) -> None:
    started = import_env(os.environ)  # before the imports (torch's sets TORCHINDUCTOR_CACHE_DIR)
    os.environ.update({k: "1" for k in OFFLINE})  # as a job sets them before its hub imports
    try:  # the supervisors wait on a pidfd (Linux 5.3): without one, every job runs plain
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        print("unavailable: no pidfd_open", flush=True)
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # what the jobs import (the stages import their heavy modules inside functions)
    import diffusers  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import (  # noqa: F401
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from snakemake import script  # noqa: F401
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401

    from tibalance import adapt, classifier, filtering, generator, judge, lora, sampling, smk, stages  # noqa: F401

    if os.path.exists(sock_path):
        os.unlink(sock_path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(128)
    write_client(client_path, sock_path, started)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            srv.close()
            try:
                _supervise(conn)
            finally:
                os._exit(0)
        conn.close()


def write_client(path: str, sock_path: str, env: dict) -> None:
    """The client script for this server (its Python, the environment it imported under)."""
    with open(path, "w") as f:
        f.write(CLIENT.format(python=sys.executable, sock=sock_path, env=env,
                              tests=os.path.dirname(os.path.abspath(__file__))))
    os.chmod(path, 0o755)


def run_snakemake(client: str, args: list[str]) -> None:
    """Snakemake's command line with `client` as the Python its script jobs start."""
    sys.executable = client
    sys.argv = ["snakemake", *args]
    from snakemake.cli import main

    main()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "snakemake":
        run_snakemake(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"tests/warm.py: unknown command {sys.argv[1]!r}")
