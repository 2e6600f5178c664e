"""Helpers shared by Tandem's tests: free ports, processes, readiness probes, a real MLflow registry."""
