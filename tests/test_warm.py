"""The DAG tests' warm Python (tests/warm.py): a script through its client runs
in a fork that has torch imported, with the client's folder, argv, environment,
output and exit status; a killed client takes its job with it; what the server
cannot stand in for runs as a plain process."""
import os
import signal
import subprocess
import time

import pytest
from conftest import warm_client

SCRIPT = """import os, sys
print("torch" in sys.modules, os.getcwd(), sys.argv[1:], os.environ.get("MARK"), flush=True)
print("to stderr", file=sys.stderr)
if os.environ.get("SLEEP"):
    open(os.environ["PIDFILE"], "w").write(str(os.getpid()))
    import time
    time.sleep(60)
raise SystemExit(int(os.environ.get("CODE", "0")))
"""


@pytest.fixture
def client():
    c = warm_client()
    if c is None:
        pytest.skip("the warm server is off (TIBALANCE_TEST_COLD) or did not start")
    return c


def run(client, script, cwd, **env):
    from warm import ONE_THREAD

    return subprocess.run([client, str(script)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD, **env})


def test_a_script_runs_warm_with_the_clients_folder_argv_env_output_and_status(client, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    (tmp_path / "here").mkdir()
    p = run(client, script, tmp_path / "here", MARK="m1", CODE="3")
    assert p.returncode == 3
    assert p.stdout.split("\n")[0] == f"True {tmp_path / 'here'} [] m1"  # torch already imported: a fork
    assert "to stderr" in p.stderr
    p = run(client, script, tmp_path, MARK="m2")
    assert p.returncode == 0 and p.stdout.startswith(f"True {tmp_path} [] m2")


def test_an_exception_fails_the_job_with_its_traceback(client, tmp_path):
    script = tmp_path / "bad.py"
    script.write_text("raise ValueError('bad input: class x')\n")
    p = run(client, script, tmp_path)
    assert p.returncode == 1 and "ValueError: bad input: class x" in p.stderr


def test_another_isa_or_thread_count_runs_as_a_plain_process(client, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    isa = "default" if os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" else "avx2"  # not the server's
    for env in ({"ATEN_CPU_CAPABILITY": isa}, {"OMP_NUM_THREADS": "2"}):
        p = run(client, script, tmp_path, **env)
        assert p.returncode == 0 and p.stdout.startswith("False "), env  # a fresh Python: no torch yet
    p = subprocess.run([client, "-c", "import sys; print('torch' in sys.modules)"], capture_output=True, text=True)
    assert p.stdout.strip() == "False"  # not a script: the plain Python


def test_a_killed_client_takes_its_job_with_it(client, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    pidfile = tmp_path / "pid"
    from warm import ONE_THREAD

    proc = subprocess.Popen([client, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", SLEEP="1", PIDFILE=str(pidfile), **ONE_THREAD))
    deadline = time.time() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    job = int(pidfile.read_text())
    assert job != proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(job, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the job {job} outlived its killed client")


def test_a_closed_stdin_is_handed_on_as_dev_null(client, tmp_path):
    """CI runs the suite with no stdin: the job still runs warm, reading nothing."""
    from warm import ONE_THREAD

    script = tmp_path / "job.py"
    script.write_text("import sys; print('torch' in sys.modules, repr(sys.stdin.read()))\n")
    p = subprocess.run([client, str(script)], capture_output=True, text=True, preexec_fn=lambda: os.close(0),
                       env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD}, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "True ''", p.stderr


def test_the_switches_every_job_sets_itself_keep_it_warm_and_a_fetch_runs_plain(client, tmp_path):
    """A test that ran a stage in-process leaves the hubs' offline switches (and a
    claimed GPU) in the worker's environment: the jobs set the first themselves
    before importing a hub library and read the second only at CUDA's start, so
    they still run warm; a fetch rule's script (online) runs plain."""
    from warm import OFFLINE

    from tibalance.smk import OFFLINE as JOB_OFFLINE

    assert set(OFFLINE) == set(JOB_OFFLINE)
    script = tmp_path / "tmpab12.sample.py"
    script.write_text(SCRIPT)
    p = run(client, script, tmp_path, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="0")
    assert p.returncode == 0 and p.stdout.startswith("True "), p.stderr
    fetch = tmp_path / "tmpab12.fetch_generator.py"
    fetch.write_text(SCRIPT)
    p = run(client, fetch, tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("False "), p.stderr
