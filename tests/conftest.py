"""Shared fixtures: free ports, real servers in subprocesses."""
