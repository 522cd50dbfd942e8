"""A minimal Debian booted with systemd in systemd-nspawn, for the service tests.

The root file system is made once by debootstrap and cached (it takes about a
minute and ~300 MB); every test session boots a copy of it, so the cache stays
clean.  Commands run inside through nsenter: the container is not registered
with machined, which a host without a system bus does not have.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

SUITE = "bookworm"
# procps: /bin/kill for ExecReload=, as on any standard Debian.
PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv,make,procps"
# Not P2PD_…: p2pd refuses environment variables with its prefix that it does not know.
CACHE_DIR = Path(os.environ.get("P2P_TEST_ROOTFS_CACHE", "/var/cache/p2pd-test"))
MIRROR = os.environ.get("P2PD_TEST_MIRROR", "http://deb.debian.org/debian")
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Deadlines for what takes real time: generous, because a loaded CI machine
#: stretches a 5 s boot to minutes, and a deadline that trips is a false failure.
BOOT_TIMEOUT = 600.0
WAIT_TIMEOUT = 180.0
#: What `systemctl is-system-running` says before the container's systemd can
#: answer (no bus yet: nothing, or "offline"/"unknown") or while it still boots.
NOT_YET = frozenset({"", "offline", "unknown", "initializing", "starting"})


def why_not_runnable() -> str | None:
    """None if this machine can boot a container; otherwise the reason, for the skip."""
    if os.geteuid() != 0:
        return "booting systemd in systemd-nspawn needs root (CI runs as root)"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install {package} (.ci/run does)"
    if not Path("/sys/fs/cgroup").is_dir() or not os.access("/sys/fs/cgroup", os.W_OK):
        return "no writable cgroup file system at /sys/fs/cgroup for the container's systemd"
    return None


def cached_root() -> Path:
    """The pristine debootstrap root, made on first use."""
    root = CACHE_DIR / f"{SUITE}-{PACKAGES.replace(',', '+')}"
    if (root / "usr/lib/systemd/systemd").exists():
        return root
    building = root.with_name(root.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, building, MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )
    building.rename(root)
    return root


class Container:
    def __init__(self, root: Path, binds: dict[Path, str]) -> None:
        self.root = root
        self._binds = binds
        self._process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        command = [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--directory={self.root}",
            "--boot",
            "--console=pipe",
            *(f"--bind-ro={host}:{inside}" for host, inside in self._binds.items()),
        ]
        self._log = (self.root.parent / "nspawn.log").open("wb")
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot: {self.console()}")
            self.leader = _descendant_named(self._process.pid, "systemd")
            time.sleep(0.1)
        state = self.system_state(deadline)
        if state not in ("running", "degraded"):
            raise RuntimeError(f"the container's systemd is {state!r}: {self.console()}")

    def system_state(self, deadline: float) -> str:
        """`systemctl is-system-running --wait`, asked again until it gives a real state.

        Right after PID 1 starts, systemctl can reach neither the bus nor the
        manager and answers with nothing at once; --wait only waits once
        connected.  On a busy machine that window lasts seconds.
        """
        answer = ""
        while (remaining := deadline - time.monotonic()) > 0:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the container stopped while booting: {self.console()}")
            try:
                result = self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
                )
            except subprocess.TimeoutExpired:
                break
            answer = result.stdout.strip()
            if answer not in NOT_YET:
                return answer
            time.sleep(0.5)
        raise RuntimeError(
            f"the container's systemd gave no state in time (last answer {answer!r}): "
            f"{self.console()}"
        )

    def console(self) -> str:
        return (self.root.parent / "nspawn.log").read_text(errors="replace")[-4000:]

    def run(
        self,
        *command: str,
        user: str | None = None,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root or as ``user`` (with that user's groups)."""
        inner: Sequence[str] = command
        if user is not None:
            inner = ["runuser", "-u", user, "--", *command]
        result = subprocess.run(
            [
                "nsenter",
                f"--target={self.leader}",
                "--all",
                "--",
                "env",
                "-i",
                f"PATH={INNER_PATH}",
                *inner,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode} in the container:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        output = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in output.stdout.splitlines() if "=" in line)

    def wait_for(self, what: str, predicate: object, timeout: float = WAIT_TIMEOUT) -> None:
        """Poll ``predicate()`` (a callable) until true: systemd's restarts take real time."""
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.2)

    def poweroff(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.send_signal(signal.SIGKILL)
                self._process.wait()
        self._log.close()


def _descendant_named(pid: int, name: str, depth: int = 3) -> int:
    """The pid of a process called ``name`` below ``pid`` (nspawn forks twice), or 0."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == name:
                return child
        except OSError:
            continue
        if depth > 1 and (found := _descendant_named(child, name, depth - 1)):
            return found
    return 0
