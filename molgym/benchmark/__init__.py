"""molgym.benchmark (see README)."""
