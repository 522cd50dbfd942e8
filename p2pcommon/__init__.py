"""Code shared by registryd, p2pd and p2pctl's daemon side: the wire format and plumbing."""

__version__ = "0.1.0"
