"""Sans-IO protocol parsers: bytes of captured streams in, protocol events out."""
