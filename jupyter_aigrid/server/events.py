"""Event schema ids and the registration of their YAML files with jupyter_events."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

JOB_STATE = "https://events.jupyter.org/jupyter_aigrid/job_state/v1"
JOB_PLACEMENT = "https://events.jupyter.org/jupyter_aigrid/job_placement/v1"
JOB_MIGRATION = "https://events.jupyter.org/jupyter_aigrid/job_migration/v1"
JOB_CHECKPOINT = "https://events.jupyter.org/jupyter_aigrid/job_checkpoint/v1"
JOB_STAGING = "https://events.jupyter.org/jupyter_aigrid/job_staging/v1"
DATASET = "https://events.jupyter.org/jupyter_aigrid/dataset/v1"
SCHEMA_IDS = (JOB_STATE, JOB_PLACEMENT, JOB_MIGRATION, JOB_CHECKPOINT, JOB_STAGING, DATASET)
_NAMES = ("job_state", "job_placement", "job_migration", "job_checkpoint", "job_staging", "dataset")


def schema_paths() -> list[Path]:
    root = files("jupyter_aigrid.server").joinpath("schemas/events")
    return [Path(str(root.joinpath(name, "v1.yaml"))) for name in _NAMES]
