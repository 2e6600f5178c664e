"""HTTP routes: thin adapters from REST shapes to the gateway's data plane."""
