"""The engine: owns the pipelines and the device. The only part of server/ that imports trdq."""

from server.engine.engine import GenerationEngine
from server.engine.jobs import JobOutput, JobSpec

__all__ = ["GenerationEngine", "JobOutput", "JobSpec"]
