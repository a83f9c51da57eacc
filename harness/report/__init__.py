"""HTML parity report: ``write_report`` for one results document, ``merge_documents`` for shards,
``report_main`` for ``wan-parity report RESULTS.json... --out DIR``."""

from .html import load_documents, merge_documents, report_main, write_report

__all__ = ["load_documents", "merge_documents", "report_main", "write_report"]
