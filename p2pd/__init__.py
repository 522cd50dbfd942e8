"""p2pd: the peer daemon."""
