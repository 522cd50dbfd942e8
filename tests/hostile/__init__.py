"""A standing hostile suite: the daemons as an attacker meets them (raw sockets, own TLS)."""
