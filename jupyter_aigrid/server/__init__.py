"""The master: the Jupyter server extension that schedules and runs jobs."""
