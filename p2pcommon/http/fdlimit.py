"""File descriptors: the daemon's own connection bound must bite before the kernel's.

A server that accepts up to its connection bound needs that many descriptors
plus its own (files, databases, Redis, control clients, transfers).  When the
process may open fewer, ``accept`` fails with EMFILE before the server's
bound ever evicts anyone: new clients wait in the backlog, and every other
open fails too.  So the soft limit is raised to the hard one (systemd's
``LimitNOFILE=`` sets both), and a server whose bound does not fit under the
limit, less a reserve, serves fewer connections and says so.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("p2pcommon.fdlimit")  # the name it has always logged under

#: The soft limit is raised at most this far, whatever the hard limit (which may be
#: "unlimited"): it bounds the descriptor table the kernel allocates for us.
MOST = 65536
#: The fewest connections a server keeps, however low the limit (it still serves, evicting).
FEWEST = 16

_raised: int | None = None


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE, raised once per process to the hard limit (capped at MOST)."""
    global _raised
    if _raised is not None:
        return _raised
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MOST if hard == resource.RLIM_INFINITY else min(hard, MOST)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as exc:  # a seccomp filter, a container's policy
            log.info("cannot raise the open file limit from %d to %d: %s", soft, wanted, exc)
    _raised = MOST if soft == resource.RLIM_INFINITY else soft
    return _raised


def connection_bound(wanted: int, reserve: int, limit: int | None = None) -> int:
    """``wanted`` connections, or fewer so that ``reserve`` descriptors stay free under
    ``limit`` (the process's, raised, by default)."""
    limit = open_file_limit() if limit is None else limit
    fits = max(FEWEST, limit - reserve)
    if wanted > fits:
        log.warning(
            "only %d file descriptors may be open (LimitNOFILE=, ulimit -n): serving at most "
            "%d connections instead of %d, so that the server's own bound bites before "
            "the kernel's; raise the limit to serve more",
            limit,
            fits,
            wanted,
        )
        return fits
    return wanted
