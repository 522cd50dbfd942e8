"""p2pctl: the command-line client of p2pd's control socket (standard library only)."""
