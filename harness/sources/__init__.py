"""Case sources other than ai-toolkit output folders and case files (``harness.targets`` dispatches to them)."""

from harness.sources.runcomfy import is_runcomfy_request, load_request

__all__ = ["is_runcomfy_request", "load_request"]
