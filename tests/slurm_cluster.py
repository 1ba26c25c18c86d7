"""A single-node SLURM cluster from Debian's slurm-wlm and munge, for tests.

The node declares stand-in GPUs (gres on /dev/null) so that `--gpus=1` jobs
schedule, and more memory than the machine has (config_overrides), so the
profile's real requests fit; its CPUs are the machine's, so jobs do not
oversubscribe them. State, spool, logs and pid files live in a
temporary directory; every daemon started here is stopped by its pid.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SBIN = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
MARKER = "# written by tibalance tests/slurm_cluster.py"
CONF_DIR = Path("/etc/slurm")
STAND_IN_GPUS = ["/dev/null", "/dev/zero", "/dev/full", "/dev/urandom"]
N_GPUS = len(STAND_IN_GPUS)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "munged", "munge")
               if _which(b) is None]
    if missing:
        return f"SLURM/munge not installed (missing {', '.join(missing)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd needs root"
    conf = CONF_DIR / "slurm.conf"
    if conf.exists() and MARKER not in conf.read_text():
        return f"{conf} belongs to a real SLURM installation; not touching it"
    return None


def _conf(tmp: Path) -> str:
    host = socket.gethostname()
    return f"""{MARKER}
ClusterName=tibalance-test
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=65000
ReturnToService=2
GresTypes=gpu
SchedulerParameters=sched_interval=1
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdLogFile={tmp}/log/slurmd.log
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
NodeName={host} CPUs={os.cpu_count()} RealMemory=512000 Gres=gpu:{N_GPUS} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _gres(tmp: Path) -> str:
    host = socket.gethostname()
    # stand-in GPUs: one character device each, so that --gpus=N jobs schedule
    files = STAND_IN_GPUS[:N_GPUS]
    return f"{MARKER}\nAutoDetect=off\nNodeName={host} Name=gpu File={','.join(files)}\n"


def _munge_works() -> bool:
    p = subprocess.run(f"{_which('munge')} -n | {_which('unmunge')}", shell=True, capture_output=True)
    return p.returncode == 0


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = Path(tmp)
        self.pids: list[int] = []
        self.written: list[Path] = []

    def start(self, timeout: float = 60.0) -> "Cluster":
        for d in ("state", "spool", "log"):
            (self.tmp / d).mkdir(parents=True, exist_ok=True)
        if not _munge_works():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            subprocess.run(["runuser", "-u", "munge", "--", _which("munged")], check=True)
            pidfile = Path("/run/munge/munged.pid")
            for _ in range(50):
                if pidfile.exists() and _munge_works():
                    break
                time.sleep(0.1)
            self.pids.append(int(pidfile.read_text().split()[0]))
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in (("slurm.conf", _conf(self.tmp)), ("gres.conf", _gres(self.tmp))):
            path = CONF_DIR / name
            path.write_text(text)
            self.written.append(path)
        subprocess.run([_which("slurmctld"), "-i"], check=True)
        self.pids.append(self._pid("slurmctld.pid"))
        subprocess.run([_which("slurmd")], check=True)
        self.pids.append(self._pid("slurmd.pid"))
        deadline = time.time() + timeout
        while time.time() < deadline:
            p = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%T"], capture_output=True, text=True)
            if p.returncode == 0 and p.stdout.strip() == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout}s; see {self.tmp}/log")

    def _pid(self, name: str) -> int:
        path = self.tmp / name
        for _ in range(100):
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"no pid file {path}")

    def stop(self) -> None:
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        for path in self.written:
            path.unlink(missing_ok=True)

    def job(self, jobid: str) -> dict[str, str]:
        """scontrol's record of a job (kept MinJobAge seconds after it ends)."""
        out = subprocess.run([_which("scontrol"), "show", "job", "-o", str(jobid)],
                             capture_output=True, text=True, check=True).stdout
        fields = {}
        for tok in out.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                fields[k] = v
        return fields

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, state, comment) of the jobs in the queue."""
        out = subprocess.run([_which("squeue"), "-h", "-o", "%i|%T|%k"], capture_output=True, text=True,
                             check=True).stdout
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]

    def scancel(self, jobid: str) -> None:
        subprocess.run([_which("scancel"), str(jobid)], check=True)

    def requeue(self, jobid: str) -> str | None:
        """What a preemption or node failure does to a requeue-able job: killed and queued again, same id.
        SLURM holds a requeued job back (its BeginTime some time ahead) for the node to be released; once
        it is pending again its start is brought to now, as an administrator would: the test then waits
        for the job, not for that hold. Returns the BeginTime SLURM had set (None if it never pended)."""
        subprocess.run([_which("scontrol"), "requeue", str(jobid)], check=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            rec = self.job(jobid)
            if rec.get("JobState") == "PENDING":
                subprocess.run([_which("scontrol"), "update", f"JobId={jobid}", "StartTime=now"], check=False,
                               capture_output=True)
                return rec.get("StartTime") or rec.get("EligibleTime")
            if rec.get("JobState") == "RUNNING" and int(rec.get("Restarts", "0")) >= 1:
                return None  # already running again
            time.sleep(0.2)
        return None
