"""The learning-workers demo (`angela-queue demo`, `make demo`)."""
