"""Reconciler: running probe sets, their states and last errors; the file watcher."""
