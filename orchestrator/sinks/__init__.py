"""Sinks: the only modules that write output."""
