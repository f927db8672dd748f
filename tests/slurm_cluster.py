"""A real single-node SLURM (munged, slurmctld, slurmd on localhost) in a temporary folder, for tests.

CPUs only, no accounting database: `jobcomp/filetxt` records every finished job (id, name, state, start, end)
and every requeue (state PENDING). A requeued job waits `cred_expire` (10 s, SLURM's default 120 s) and then
starts within a second (`sched_interval=1`; the default 60 s).
`python tests/slurm_cluster.py DIR` starts one by hand and prints the environment to use it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue")
CPUS = 4  # more than this machine may have (config_overrides): jobs here are small and mostly wait


def missing() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def install() -> str | None:
    """apt-get install SLURM and munge when they are missing and we are root; the reason when they stay missing."""
    if not missing():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"SLURM is not installed ({', '.join(missing())} missing) and apt-get cannot install it here " \
               f"(needs root and apt-get): apt-get install {' '.join(PACKAGES)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return f"{' '.join(command)} failed: {proc.stderr.strip()[-500:]}"
    return None if not missing() else f"still missing after apt-get: {', '.join(missing())}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    """munged + slurmctld + slurmd with every file under `root`; `env` is what a client (sbatch, squeue) needs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "jobcomp.txt"
        self.socket = self.root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []
        self.node = socket.gethostname().split(".")[0]
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=mckdtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser={os.environ.get("USER") or "root"}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={self.socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> None:
        self.write_config()
        r = self.root
        log = (r / "log" / "daemons.out").open("ab")
        self.procs.append(subprocess.Popen(
            [sbin("munged"), "-F", "--force", f"--socket={self.socket}", f"--key-file={r}/munge/munge.key",
             f"--log-file={r}/log/munged.log", f"--pid-file={r}/munge/munged.pid",
             f"--seed-file={r}/munge/munged.seed"], stdout=log, stderr=log))
        self.wait(lambda: self.socket.exists(), "munged's socket", 15)
        self.procs.append(subprocess.Popen([sbin("slurmctld"), "-D", "-c", "-f", str(self.conf)],
                                           stdout=log, stderr=log, env=self.env))
        self.procs.append(subprocess.Popen([sbin("slurmd"), "-D", "-f", str(self.conf)],
                                           stdout=log, stderr=log, env=self.env))
        self.wait(self.idle, "the node to be idle in sinfo", timeout)

    def idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=self.env)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def wait(self, ready, what: str, timeout: float) -> None:
        end = time.time() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.time() > end:
                self.stop()
                logs = "\n".join(p.read_text()[-1500:] for p in sorted((self.root / "log").glob("*")) if p.is_file())
                raise RuntimeError(f"SLURM did not start ({'exited: ' + ', '.join(dead) if dead else 'timeout'}) "
                                   f"waiting for {what}:\n{logs}")
            time.sleep(0.5)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", f"--user={os.environ.get('USER') or 'root'}"],
                       capture_output=True, env=self.env)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()

    def jobs(self) -> list[dict[str, str]]:
        """The job-completion records: one dict per finished job (JobId, JobName, JobState, StartTime, EndTime, ...)."""
        if not self.jobcomp.is_file():
            return []
        records = []
        for line in self.jobcomp.read_text().splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            records.append(fields)
        return records


def timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


if __name__ == "__main__":
    import signal

    cluster = Cluster(Path(sys.argv[1]).absolute())
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}  # Ctrl-C or SIGTERM stops the cluster", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.stop()
