"""registryd: the registry, who is online (HTTP JSON API, memory or Redis store)."""
