"""Profiles: load YAML with line marks, validate against the schema, semantic checks, frozen models."""
