"""Kernel side: target discovery, hook tables, rendering, event layout, loading and attaching."""
