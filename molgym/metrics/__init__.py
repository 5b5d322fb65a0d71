"""molgym.metrics (see README)."""
