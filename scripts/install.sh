#!/usr/bin/env bash
# Install p2pd as a system service (what `make install` runs), or remove it.
#
#   scripts/install.sh [--wheelhouse DIR]   install or upgrade
#   scripts/install.sh --uninstall          remove; keeps config, secrets and data
#
# Idempotent: running it again upgrades the package and the units and never
# touches an existing /etc/p2pd.toml, /etc/registryd.toml or secret.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
prefix=${P2PD_PREFIX:-/opt/p2pd}
bindir=/usr/local/bin
unitdir=/etc/systemd/system
sysusersdir=/etc/sysusers.d
share=/srv/p2pd/share
downloads=/srv/p2pd/downloads
commands=(p2pd p2pctl registryd)
wheelhouse=""
action=install

while (($#)); do
    case $1 in
        --wheelhouse) wheelhouse=$2; shift 2 ;;
        --uninstall) action=uninstall; shift ;;
        *) echo "install.sh: unknown option $1 (use --wheelhouse DIR or --uninstall)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root: sudo make $action" >&2
    exit 1
fi

systemd_running() { [ -d /run/systemd/system ]; }

say() { printf '%s\n' "$*"; }

if [ "$action" = uninstall ]; then
    if systemd_running; then
        systemctl disable --now p2pd.service registryd.service 2>/dev/null || true
    fi
    rm -f "$unitdir/p2pd.service" "$unitdir/registryd.service"
    rm -rf "$unitdir/p2pd.service.d"
    for command in "${commands[@]}"; do
        # Only our own links: never a file someone else put there.
        [ "$(readlink "$bindir/$command" 2>/dev/null)" = "$prefix/bin/$command" ] && rm -f "$bindir/$command"
    done
    rm -rf "$prefix"
    rm -f "$sysusersdir/p2pd.conf"
    if systemd_running; then systemctl daemon-reload; fi
    say "p2pd removed. Kept: /etc/p2pd.toml, /etc/registryd.toml, /etc/p2pd/, /etc/registryd/,"
    say "/var/lib/p2pd (identity, history), $share and $downloads, and the user p2pd."
    say "Delete them by hand if you no longer want them (userdel p2pd)."
    exit 0
fi

# 1. The package, in a venv of its own.
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "install.sh: python3 cannot create a venv: apt-get install python3-venv" >&2
    exit 1
fi
[ -x "$prefix/bin/python" ] || python3 -m venv "$prefix"
# Exactly the versions CI tested (requirements/main.txt, each file checked by its
# hash); an upgrade also removes what an older lock had and this one does not.
if [ -n "$wheelhouse" ]; then
    # Offline: wheels made on a connected machine by `make wheelhouse WHEELHOUSE=DIR`.
    python3 "$src/scripts/lock.py" install "$prefix" main --wheelhouse "$wheelhouse"
else
    # Built from a copy: pip builds in the tree it is given, and root-owned
    # build/ and *.egg-info left in the user's clone would break `make venv`.
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    tar -C "$src" --exclude=./.venv --exclude=./.git --exclude=./build --exclude='*.egg-info' \
        -cf - . | tar -C "$build" -xf -
    python3 "$src/scripts/lock.py" install "$prefix" main --project "$build"
fi
# Every p2pctl command is a new interpreter: in place of pip's console script, a
# launcher that skips site (python -IS), which p2pctl does not need (p2pctl/launcher.py).
"$prefix/bin/python" -m p2pctl.launcher "$prefix/bin/p2pctl"
install -m 0644 "$src/README.md" "$prefix/README.md"
for command in "${commands[@]}"; do
    ln -sfn "$prefix/bin/$command" "$bindir/$command"
done

# 2. The account: p2pd runs as p2pd; members of the group use p2pctl.
# registryd needs none (DynamicUser=yes).
install -D -m 0644 "$src/systemd/p2pd.sysusers" "$sysusersdir/p2pd.conf"
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers "$sysusersdir/p2pd.conf"
elif ! id p2pd >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/p2pd --shell /usr/sbin/nologin p2pd
fi

# 3. The shared secret, made once; the registry on this host gets the same one.
# It is root's alone: the services get it as the systemd credential 'secret'
# (LoadCredential=), and the group p2pd gives the control socket, not the secret.
install -d -m 0700 -o root -g root /etc/p2pd
if [ ! -s /etc/p2pd/secret ]; then
    (umask 0077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > /etc/p2pd/secret)
    say "made a new shared secret in /etc/p2pd/secret (every member and registry needs it)"
fi
# An install before the credential left it 0640 root:p2pd, readable by every p2pctl user.
was=$(stat -c '%a %U:%G' /etc/p2pd/secret)
if [ "$was" != "600 root:root" ]; then
    chmod 0600 /etc/p2pd/secret # first: the group's read ends before the owner changes
    chown root:root /etc/p2pd/secret
    say "made /etc/p2pd/secret root's alone (mode 0600 root:root, was $was):"
    say "  p2pd now gets it as a systemd credential; the group p2pd no longer reads it"
fi
install -d -m 0700 /etc/registryd
[ -s /etc/registryd/secret ] || install -m 0600 /etc/p2pd/secret /etc/registryd/secret

# 4. Config files, only where there are none. p2pd's names no secret: the unit
# passes /etc/p2pd/secret as its credential (an older one naming that file works too).
if [ ! -e /etc/p2pd.toml ]; then
    install -d -o p2pd -g p2pd -m 2775 "$share" "$downloads"
    "$bindir/p2pd" config init --share "$share" --downloads "$downloads" \
        --registry http://127.0.0.1:7000 --output /etc/p2pd.toml
fi
[ -e /etc/registryd.toml ] || "$bindir/registryd" config init --output /etc/registryd.toml

# 5. The units, and the drop-in that opens the configured folders.
install -m 0644 "$src/systemd/p2pd.service" "$src/systemd/registryd.service" "$unitdir/"
"$bindir/p2pd" install --config /etc/p2pd.toml
if systemd_running; then
    systemctl daemon-reload
    # An upgrade takes effect at once where the services run; nothing starts otherwise.
    systemctl try-restart registryd.service p2pd.service
fi

say ""
say "Installed. Next:"
say "  1. edit /etc/p2pd.toml (folders, registries); then: sudo p2pd install"
say "  2. sudo systemctl enable --now registryd p2pd   (registryd only on the registry host)"
say "  3. sudo usermod -aG p2pd \$USER, log in again, then: p2pctl status"
say "     (the group gives p2pctl, not the secret: that stays root's)"
say "  p2pctl doctor checks the setup and says what to fix."
