"""Event pipeline: ring-buffer polling, decoding, connection tracking, ordered per-connection workers."""
