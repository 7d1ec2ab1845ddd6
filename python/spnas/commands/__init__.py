"""The subcommands of `spnas` that drive a search: search, derive, latency, plot."""
