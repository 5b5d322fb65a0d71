"""Data: QM9 access, configuration sampling, labelling."""
