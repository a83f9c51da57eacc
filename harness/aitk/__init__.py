"""Importers for ostris/ai-toolkit jobs: the job YAML, its sample list, and its output folder.

Pure Python on purpose: importing a job must work on a machine without torch or a GPU.
"""

from harness.aitk.job import AitkJob, load_job
from harness.aitk.outputs import discover, lora_metadata, lora_software_version
from harness.aitk.samples import expand_samples, merge_decision

__all__ = [
    "AitkJob",
    "load_job",
    "expand_samples",
    "merge_decision",
    "discover",
    "lora_metadata",
    "lora_software_version",
]
