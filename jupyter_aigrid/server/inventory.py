"""Finding GPUs: NVML when the machine has NVIDIA GPUs, simulated CPU slots otherwise."""

from __future__ import annotations

import logging

from .model import Gpu

SIMULATED_MODEL = "simulated"
log = logging.getLogger(__name__)


def nvml_gpus() -> list[Gpu]:
    """The machine's NVIDIA GPUs, in NVML order; empty when there is no driver or GPU."""
    try:
        import pynvml
    except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.debug("NVML unavailable: %s", e)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)
            gpus.append(
                Gpu(
                    index=i,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    model=name.decode() if isinstance(name, bytes) else name,
                    memory_mb=int(mem),
                    simulated=False,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def nvml_utilisation(uuids: list[str]) -> dict[str, dict[str, int]]:
    """Live utilisation and memory use per GPU uuid; empty without NVML."""
    if not uuids:
        return {}
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {}
    try:
        out = {}
        for uuid in uuids:
            try:
                h = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            except pynvml.NVMLError:
                continue
            out[uuid] = {
                "utilization_pct": int(util.gpu),
                "memory_used_mb": int(mem.used // (1024 * 1024)),
            }
        return out
    finally:
        pynvml.nvmlShutdown()


def simulated_gpus(
    node: str, count: int, memory_mb: int = 16384, model: str | None = None
) -> list[Gpu]:
    """``count`` CPU slots that stand in for GPUs, marked ``simulated``; their model is
    ``simulated:<model>`` when the GPU they stand in for is declared."""
    return [
        Gpu(
            index=i,
            uuid=f"SIM-{node}-{i}",
            model=f"{SIMULATED_MODEL}:{model}" if model else SIMULATED_MODEL,
            memory_mb=memory_mb,
            simulated=True,
        )
        for i in range(count)
    ]
