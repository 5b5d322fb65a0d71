"""molgym.training (see README)."""
