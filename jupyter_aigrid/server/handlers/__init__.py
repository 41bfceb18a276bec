"""Thin REST handlers, one module per resource: parse, authorize, call the master, serialize."""

from __future__ import annotations

from .cluster import ClusterHandler, ProfilesHandler
from .datasets import (
    CommitHandler,
    DatasetHandler,
    DatasetsHandler,
    UploadDataHandler,
    UploadHandler,
    UploadsHandler,
    VerifyHandler,
)
from .events import EventsHandler
from .images import ImageHandler, ImagesHandler
from .jobs import CheckpointHandler, JobHandler, JobsHandler, MigrateHandler
from .logs import LogsHandler
from .openapi import OpenAPIHandler
from .results import OutputHandler, ResultHandler
from .simulate import SimulateHandler
from .templates import TemplatesHandler

API = "/aigrid/api"
_JOB = r"(?P<job_id>[^/]+)"
_NAME = r"(?P<name>[^/]+)"
_UPLOAD = r"(?P<upload_id>[^/]+)"

#: (route, handler); the OpenAPI document lists exactly these paths.
ROUTES = [
    (rf"{API}/jobs", JobsHandler),
    (rf"{API}/jobs/{_JOB}", JobHandler),
    (rf"{API}/jobs/{_JOB}/logs", LogsHandler),
    (rf"{API}/jobs/{_JOB}/checkpoint", CheckpointHandler),
    (rf"{API}/jobs/{_JOB}/migrate", MigrateHandler),
    (rf"{API}/jobs/{_JOB}/result", ResultHandler),
    (rf"{API}/jobs/{_JOB}/outputs/(?P<name>[^/]+)", OutputHandler),
    (rf"{API}/events", EventsHandler),
    (rf"{API}/cluster", ClusterHandler),
    (rf"{API}/profiles", ProfilesHandler),
    (rf"{API}/simulate", SimulateHandler),
    (rf"{API}/templates", TemplatesHandler),
    (rf"{API}/images", ImagesHandler),
    (rf"{API}/images/(?P<image_id>[^/]+)", ImageHandler),
    (rf"{API}/datasets", DatasetsHandler),
    (rf"{API}/datasets/{_NAME}", DatasetHandler),
    (rf"{API}/datasets/{_NAME}/verify", VerifyHandler),
    (rf"{API}/uploads", UploadsHandler),
    (rf"{API}/uploads/{_UPLOAD}", UploadHandler),
    (rf"{API}/uploads/{_UPLOAD}/data", UploadDataHandler),
    (rf"{API}/uploads/{_UPLOAD}/commit", CommitHandler),
    (rf"{API}/openapi.yaml", OpenAPIHandler),
]
