"""The iterative DAG driver: campaign state on disk, resume."""
