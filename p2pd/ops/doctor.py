"""``p2pctl doctor``: can this host's p2pd run, and if not, what exactly to fix.

Every check yields a CheckResult whose message says what was found and whose
fix is a command or config edit to paste. p2pctl imports this module only for
the doctor command: its other commands start with the standard library alone.
"""

from __future__ import annotations

import email.utils
import errno
import grp
import json
import os
import pwd
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import trio

from p2pcommon.http.client import (
    ClientConnection,
    Head,
    HttpClientError,
    Origin,
    connect,
    tls_context,
)
from p2pcommon.lifecycle import ConfigError
from p2pcommon.models import split_host_port
from p2pcommon.registry_client import MAX_ANSWER
from p2pcommon.settings import load_settings, read_secret
from p2pcommon.signing.signer import MAX_SKEW, AuthError, Signer
from p2pd.config import DEFAULT_PATH, PeerSettings
from p2pd.ops.admin import DROPIN_DIR, SERVICE_SECRET, UNIT_STATE_DIR, dropin_problem

Status = Literal["ok", "warning", "problem", "skipped"]

INOTIFY_LIMIT_PATH = Path("/proc/sys/fs/inotify/max_user_watches")
#: Above this share of the watch limit, a growing share will soon hit it.
INOTIFY_WARNING_SHARE = 0.8
REGISTRY_TIMEOUT = 3.0
#: Half the signatures' tolerance: drift beyond it is worth fixing before it breaks.
CLOCK_WARNING = MAX_SKEW / 2

# os.access's flags have the values of one class's rwx bits in st_mode.
READ, WRITE, SEARCH = os.R_OK, os.W_OK, os.X_OK

#: Asks the daemon on a control socket for its status; None when nothing answers.
AskDaemon = Callable[[str], dict[str, Any] | None]


@dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    message: str
    fix: str = ""


def run_checks(
    config_path: str | None,
    user_name: str,
    control_sockets: Sequence[str],
    ask_daemon: AskDaemon,
    *,
    inotify_limit_path: Path = INOTIFY_LIMIT_PATH,
    service_secret: Path = Path(SERVICE_SECRET),
) -> list[CheckResult]:
    """All checks in order; those that need the config are skipped when it is bad."""
    path, origin = config_to_check(config_path, control_sockets, ask_daemon)
    config, settings, secret = check_config(path, service_secret, origin)
    results = [config]
    if settings is None or secret is None:
        why = "needs a valid config first (see the 'config' check)"
        names = ("secret", "folders", "service", "inotify", "registry", "clock", "listen")
        return results + [CheckResult(name, "skipped", why) for name in names]
    results.append(check_secret(settings, path, service_secret, service_installed()))
    results += check_folders(settings, user_name, path)
    results.append(check_service(settings, path))
    results.append(check_inotify(settings.share_dir, inotify_limit_path))
    skews: list[tuple[str, float, str]] = []
    for url in settings.registries:
        result, skew = probe_registry(url, secret, path)
        results.append(result)
        if skew is not None:
            skews.append((url, *skew))
    results += [clock_result(url, skew, source) for url, skew, source in skews]
    if not skews:
        why = "no registry answered, so there is no clock to compare with"
        results.append(CheckResult("clock", "skipped", why))
    sockets = [str(settings.control_socket), *control_sockets]
    results.append(check_listen(settings.listen, sockets, ask_daemon, path))
    return results


def config_to_check(
    config_path: str | None, control_sockets: Sequence[str], ask_daemon: AskDaemon
) -> tuple[str, str]:
    """The config file to check, and why that one (to say so; "" for the usual).

    ``--config``, else ``$P2PD_CONFIG``, else the file the p2pd answering on
    the control socket was started with (a daemon run by hand rarely uses
    /etc/p2pd.toml), else the default path.
    """
    if config_path:
        return config_path, ""
    if from_env := os.environ.get("P2PD_CONFIG"):
        return from_env, " (from P2PD_CONFIG)"
    for socket_path in dict.fromkeys(control_sockets):
        status = ask_daemon(socket_path)
        started_with = status.get("config") if status else None
        if isinstance(started_with, str) and started_with:
            return started_with, f" (the config of the p2pd answering on {socket_path})"
    return DEFAULT_PATH, ""


def check_config(
    path: str, service_secret: Path = Path(SERVICE_SECRET), origin: str = ""
) -> tuple[CheckResult, PeerSettings | None, str | None]:
    try:
        settings, _ = load_settings(PeerSettings, explicit_path=path, default_path=DEFAULT_PATH)
        source, secret_path = secret_source(settings, service_secret)
        if source == SERVICE_SOURCE and secret_path is not None:
            secret = read_secret(source, secret_path)
        else:
            secret = settings.resolve_secret()
    except ConfigError as exc:
        if not Path(path).exists():
            fix = f"create {path} (`sudo p2pd config init …`, see the README), or pass --config"
        elif "Permission denied" in str(exc):
            # The secret is root's alone; the service gets it as a systemd credential.
            fix = "run `sudo p2pctl doctor`: only root may read the shared secret"
        else:
            fix = f"edit {path} (or the P2PD_* variable named) as the message says"
        problem = f"{path}{origin}: {exc}" if origin else str(exc)
        return CheckResult("config", "problem", problem, fix), None, None
    ok = CheckResult("config", "ok", f"{path}{origin} is valid and names a usable secret")
    return ok, settings, secret


SERVICE_SOURCE = "the service's credential file"


def secret_source(settings: PeerSettings, service_secret: Path) -> tuple[str, Path | None]:
    """As ``settings.secret_source()``, but where the config names no secret, the
    file the unit passes as the credential: what p2pd.service would use."""
    try:
        return settings.secret_source()
    except ConfigError as none_named:
        try:
            service_secret.stat()
        except FileNotFoundError:
            message = f"{none_named}; nor is there {service_secret} for the service's credential"
            raise ConfigError(message) from None
        except OSError:
            pass  # there, but not ours to look at: reading it says so
        return SERVICE_SOURCE, service_secret


def service_installed() -> bool:
    return (Path(DROPIN_DIR).parent / "p2pd.service").exists()


def check_secret(
    settings: PeerSettings, config: str, service_secret: Path, installed: bool
) -> CheckResult:
    """Whoever can read the secret can sign registry requests: only root and the
    services may (the group p2pd gives the control socket, not the secret)."""
    source, path = secret_source(settings, service_secret)
    if source.startswith("systemd"):
        return CheckResult("secret", "ok", "the secret comes from the systemd credential")
    if path is None and "P2PD_SECRET" in os.environ:
        return CheckResult("secret", "ok", "the secret comes from P2PD_SECRET")
    found: list[Found] = []
    if path is None:
        found += exposed(Path(config), f"{config}, which holds the secret inline,", (
            f"move the secret to {service_secret} (mode 600, owner root) and delete 'secret' "
            f"from {config}; or, where only its owner runs p2pd: sudo chmod 600 {config}"
        ))  # fmt: skip
    else:
        found += exposed(path, f"the secret {path}", f"sudo chmod 600 {path}")
    if installed and path != service_secret:
        try:
            service_secret.stat()
        except FileNotFoundError:
            found.append((
                f"the unit loads its credential 'secret' from {service_secret}, which is "
                "missing: p2pd.service cannot start",
                f"copy the network's secret there: sudo install -m 600 -o root -g root "
                f"FILE {service_secret}",
            ))  # fmt: skip
        except OSError:
            pass
        else:
            found += exposed(service_secret, f"the secret {service_secret}", (
                f"sudo chmod 600 {service_secret}"
            ))  # fmt: skip
    if found:
        messages, fixes = zip(*found, strict=True)
        return CheckResult("secret", "problem", "; ".join(messages), "; ".join(fixes))
    where = f"{config} (inline)" if path is None else str(path)
    if installed and path != service_secret:
        key = "secret" if path is None else "secret_file"
        message = f"the service uses {service_secret} (its systemd credential), not '{key}' "
        message += f"in {config} ({where}): p2pctl doctor checked the registry with the latter"
        fix = f"delete '{key}' from {config} if both should be the same secret"
        return CheckResult("secret", "warning", message, fix)
    return CheckResult("secret", "ok", f"{where} is readable by its owner only")


def exposed(path: Path, what: str, fix: str) -> list[Found]:
    """Why ``path`` lets others read the secret, with ``fix``; [] when it does not."""
    try:
        info = path.stat()
    except OSError:
        return []  # the config check has said why it cannot be read
    if not info.st_mode & 0o077:
        return []
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    who = [
        *([f"the group {group}"] if info.st_mode & 0o070 else []),
        *(["everyone"] if info.st_mode & 0o007 else []),
    ]
    mode = f"{info.st_mode & 0o777:04o}"
    message = f"{what} is open to {' and '.join(who)} (mode {mode}): "
    message += "whoever reads it can sign registry requests as a member"
    return [(message, fix)]


def check_service(settings: PeerSettings, path: str) -> CheckResult:
    if not service_installed():
        return CheckResult("service", "skipped", "p2pd is not installed as a service here")
    problem = dropin_problem(settings)
    if problem is None:
        return CheckResult("service", "ok", "the unit's drop-in opens the configured folders")
    fix = f"sudo p2pd install --config {path} && sudo systemctl restart p2pd"
    return CheckResult("service", "problem", problem, fix)


# -- folders --------------------------------------------------------------------------


@dataclass(frozen=True)
class UserIds:
    name: str
    uid: int
    gids: frozenset[int]


def may_access(mode: int, owner: int, group: int, user: UserIds, want: int) -> bool:
    """Whether the mode bits grant ``want`` (READ | WRITE | SEARCH) to ``user``.

    As in the kernel, exactly one class decides: the owner's bits for the
    owner, else the group's for a member, else the others' — even where a
    later class would grant more. Root may do anything. ACLs are not read.
    """
    if user.uid == 0:
        return True
    if user.uid == owner:
        bits = mode >> 6
    elif group in user.gids:
        bits = mode >> 3
    else:
        bits = mode
    return bits & want == want


Access = Callable[[Path, int], bool]


def access_of(user: UserIds) -> Access:
    # os.access answers for the caller (often root), not for the service user.
    def allowed(path: Path, want: int) -> bool:
        try:
            info = path.stat()
        except OSError:
            return False  # not even the caller may look: run the doctor with sudo
        return may_access(info.st_mode, info.st_uid, info.st_gid, user, want)

    return allowed


def check_folders(settings: PeerSettings, user_name: str, config: str) -> Iterator[CheckResult]:
    try:
        entry = pwd.getpwnam(user_name)
        user = UserIds(user_name, entry.pw_uid, frozenset(os.getgrouplist(user_name, entry.pw_gid)))
        access = access_of(user)
    except KeyError:
        entry = pwd.getpwuid(os.getuid())
        message = f"there is no user {user_name!r}: checking the folders as {entry.pw_name} instead"
        fix = "install the service (it creates the user p2pd), or pass --user NAME"
        yield CheckResult("folders", "warning", message, fix)
        user, access = UserIds(entry.pw_name, entry.pw_uid, frozenset()), os.access
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    folders = FolderAccess(access, user.name, group, config)
    found = [
        *folders.share_problems(settings.share_dir),
        *folders.writable_problems("download_dir", settings.download_dir),
        *folders.writable_problems("state_dir", settings.state_dir),
    ]
    if found:
        messages, fixes = zip(*found, strict=True)
        yield CheckResult("folders", "problem", "; ".join(messages), "; ".join(fixes))
    else:
        message = f"{user.name} can read share_dir and write download_dir and state_dir"
        yield CheckResult("folders", "ok", message)


Found = tuple[str, str]  # (what is wrong, the command that fixes it)


@dataclass(frozen=True)
class FolderAccess:
    """Finds what keeps ``user`` from p2pd's folders; the fixes name ``group``."""

    access: Access
    user: str
    group: str
    config: str

    def blocked_parent(self, key: str, path: Path) -> Found | None:
        for parent in reversed(path.parents):  # from / down
            if parent.exists() and not self.access(parent, SEARCH):
                # o+x lets anyone pass through, not list: less than changing the group.
                return f"{self.user} cannot enter {parent}, a parent of {key} {path}", (
                    f"sudo chmod o+x {parent}"
                )
        return None

    def share_problems(self, share: Path) -> Iterator[Found]:
        share = share.resolve()  # the kernel checks the real path's directories
        if not share.is_dir():
            what = "is not a directory" if share.exists() else "does not exist"
            fix = f"sudo mkdir -p {share}, or set share_dir in {self.config} to the folder to share"
            yield f"share_dir {share} {what}", fix
        elif blocked := self.blocked_parent("share_dir", share):
            yield blocked
        elif not self.access(share, READ | SEARCH):
            fix = f"sudo chgrp -R {self.group} {share} && sudo chmod -R g+rX {share}"
            yield f"{self.user} cannot read share_dir {share}", fix

    def writable_problems(self, key: str, folder: Path) -> Iterator[Found]:
        folder = folder.resolve()
        if folder == Path(UNIT_STATE_DIR) and not folder.exists():
            return  # systemd creates it as the service user (StateDirectory=p2pd)
        # A missing folder is created by p2pd: then its nearest ancestor must be writable.
        target = next(p for p in (folder, *folder.parents) if p.exists())
        owner = f"{self.user}:{self.group}"
        if not target.is_dir():
            yield f"{key} {target} is not a directory", f"set {key} in {self.config} to a folder"
        elif blocked := self.blocked_parent(key, folder):
            yield blocked
        elif not self.access(target, WRITE | SEARCH) and target == folder:
            yield f"{self.user} cannot write to {key} {folder}", f"sudo chown -R {owner} {folder}"
        elif not self.access(target, WRITE | SEARCH):
            yield (
                f"{key} {folder} does not exist and {self.user} may not create it in {target}",
                f"sudo mkdir -p {folder} && sudo chown {owner} {folder}",
            )


# -- inotify --------------------------------------------------------------------------


def count_directories(root: Path) -> int:
    # os.walk does not follow symbolic links, and neither does p2pd's watcher.
    return sum(1 for _ in os.walk(root))


def suggested_watch_limit(directories: int) -> int:
    """A round number above twice the need: room for the share to grow."""
    target = 2 * directories
    step: int = 10 ** (len(str(target)) - 1)
    return (target // step + 1) * step


def check_inotify(share: Path, limit_path: Path = INOTIFY_LIMIT_PATH) -> CheckResult:
    try:
        limit = int(limit_path.read_text().strip())
    except (OSError, ValueError) as exc:
        return CheckResult("inotify", "skipped", f"cannot read the limit from {limit_path}: {exc}")
    if not share.is_dir():
        return CheckResult("inotify", "skipped", f"share_dir {share} is not a folder (see above)")
    directories = count_directories(share)
    found = f"share_dir {share} has {directories} folder(s), each needing an inotify watch;"
    # The limit counts per user: the service user's other programs use it too.
    if directories <= INOTIFY_WARNING_SHARE * limit:
        return CheckResult("inotify", "ok", f"{found} the limit is {limit}")
    if directories > limit:
        status: Status = "problem"
        message = f"{found} more than the limit {limit}: p2pd will rescan every 5 s instead"
    else:
        status, message = "warning", f"{found} close to the limit {limit}"
    line = f"fs.inotify.max_user_watches={suggested_watch_limit(directories)}"
    fix = f"sudo sysctl {line} && echo '{line}' | sudo tee /etc/sysctl.d/90-p2pd.conf"
    return CheckResult("inotify", status, message, fix)


# -- registry and clock ---------------------------------------------------------------


def probe_registry(
    url: str, secret: str, config: str, timeout: float = REGISTRY_TIMEOUT
) -> tuple[CheckResult, tuple[float, str] | None]:
    """A signed GET /clients, as the daemon sends it; the skew when the registry answered."""
    signer = Signer(secret)
    base = url.rstrip("/")
    sent = time.time()
    headers, nonce = signer.sign_request("GET", urlsplit(base).path + "/clients", b"", now=sent)
    try:
        head, content = trio.run(_get, base, headers, timeout)
    except (trio.TooSlowError, HttpClientError, ValueError) as exc:  # ValueError: the URL
        timed_out = isinstance(exc, trio.TooSlowError)
        why = f"no answer within {timeout:.0f} s" if timed_out else str(exc)
        fix = f"check the URL in 'registries' in {config}, and that registryd runs there"
        fix += " (`systemctl status registryd` on that host)"
        return CheckResult("registry", "problem", f"{url} is unreachable: {why}", fix), None
    # The server stamped its time somewhere during the round trip: compare with the middle.
    stamp = server_time(head.headers)
    reading = None if stamp is None else (stamp[0] - (sent + time.time()) / 2, stamp[1])
    status = head.status
    reason = _error_of(head, content)
    if status == 200:
        try:
            # Checked at the registry's time: a skew is the clock check's to report.
            now = stamp[0] if stamp else time.time()
            signer.verify_response(200, head.fields, content, nonce=nonce, now=now)
        except AuthError as exc:
            message = f"{url} answered, but not signed with our secret ({exc})"
            fix = f"check that {url} is a registry of this network ('registries' in {config})"
            return CheckResult("registry", "problem", message, fix), reading
        members = len(json.loads(content).get("clients", []))
        message = f"{url} accepted our signature; {members} member(s) online"
        return CheckResult("registry", "ok", message), reading
    if status == 401:
        message = f"{url}: the registry refused our signature ({reason}): "
        message += "the secret differs or the clock is off"
        fix = f"give 'secret' or 'secret_file' in {config} the registry's secret, and "
        fix += "synchronise both clocks: `sudo timedatectl set-ntp true`"
    elif status == 429:
        message = f"{url} refuses this address for a minute after too many refused requests"
        fix = "fix the secret or the clock first, then wait a minute and run p2pctl doctor again"
    else:
        message = f"{url} answered {status} {reason}: it does not serve the registry API"
        fix = f"check the URL in 'registries' in {config} (`journalctl -u registryd` there)"
    return CheckResult("registry", "problem", message, fix), reading


async def _get(base: str, headers: dict[str, str], seconds: float) -> tuple[Head, bytes]:
    """GET base/clients on a connection of its own, within ``seconds``."""
    origin = Origin.of(base)
    tls = tls_context() if origin.tls else None
    with trio.fail_after(seconds):
        stream = await connect(origin.host, origin.port, tls=tls, connect_timeout=seconds)
        connection = ClientConnection(stream, name=base, host=origin.netloc)
        try:
            head = await connection.request("GET", origin.path + "/clients", headers)
            return head, await connection.body(MAX_ANSWER)
        finally:
            await connection.aclose()


def _error_of(head: Head, content: bytes) -> str:
    try:
        return str(json.loads(content).get("error", ""))
    except (ValueError, AttributeError):
        return head.reason


_CREATED = re.compile(r";\s*created=(\d+)")


def server_time(headers: Mapping[str, str]) -> tuple[float, str] | None:
    """The registry's time and where it was read: the Date header, else the signature."""
    date = headers.get("date")
    if date:
        try:
            # Date is truncated to the second: its middle is the better estimate.
            return email.utils.parsedate_to_datetime(date).timestamp() + 0.5, "Date header"
        except (TypeError, ValueError):
            pass
    match = _CREATED.search(headers.get("signature-input", ""))
    return (int(match.group(1)) + 0.5, "signature's created time") if match else None


def classify_skew(skew: float) -> Status:
    if abs(skew) > MAX_SKEW:
        return "problem"
    return "warning" if abs(skew) > CLOCK_WARNING else "ok"


def clock_result(url: str, skew: float, source: str) -> CheckResult:
    """``skew`` is the registry's clock minus ours, in seconds."""
    status = classify_skew(skew)
    side = "behind" if skew > 0 else "ahead of"
    message = f"this clock is {abs(skew):.0f} s {side} {url} (its {source}); "
    message += f"signatures allow ±{MAX_SKEW} s"
    fix = "" if status == "ok" else "sudo timedatectl set-ntp true (here and on the registry)"
    return CheckResult("clock", status, message, fix)


# -- listen ---------------------------------------------------------------------------


def check_listen(
    listen: str, control_sockets: Sequence[str], ask_daemon: AskDaemon, config: str
) -> CheckResult:
    host, port = split_host_port(listen)
    for path in dict.fromkeys(control_sockets):
        status = ask_daemon(path)
        running = status.get("listen") if status else None
        if isinstance(running, str) and split_host_port(running)[1] == port:
            return CheckResult("listen", "ok", f"p2pd is running and listening on {running}")
    error = try_bind(host, port)
    if error is None:
        return CheckResult("listen", "ok", f"{listen} is free for p2pd to listen on")
    if error.errno == errno.EADDRINUSE:
        message = f"{listen} is in use by another program"
        fix = f"stop the other program (`sudo ss -ltnp 'sport = :{port}'` shows it; if it is "
        fix += f"p2pd, you cannot reach its control socket), or change the key 'listen' in {config}"
    elif error.errno == errno.EACCES:
        message = f"{listen}: ports below 1024 need a capability p2pd does not have"
        fix = f"set 'listen' in {config} to a port of 1024 or more, e.g. \"{host}:7070\""
    else:
        message = f"cannot listen on {listen}: {error.strerror or error}"
        fix = f"set 'listen' in {config} to an address of this host, e.g. \"0.0.0.0:{port}\""
    return CheckResult("listen", "problem", message, fix)


def try_bind(host: str, port: int) -> OSError | None:
    """Bind every address the daemon would listen on; the first failure, if any."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as sock:
                # As trio's listeners do: a port left in TIME_WAIT is not in use.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
    except OSError as exc:
        return exc
    return None
