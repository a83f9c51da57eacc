"""HTML parity report: ``write_report`` for one results document, ``merge_documents`` for shards,
``build_report`` / ``report_main`` for ``wan-parity report RESULTS.json... --out DIR [--baseline PREVIOUS.json]``,
``compare_to_baseline`` for night-over-night regressions, ``write_diagnosis_report`` for ``wan-parity diagnose``
(``write_report(..., diagnosis=...)`` shows the same drift-diagnosis blocks next to the results).
Both page writers take ``self_contained`` (one file, every asset inlined), ``max_pictures`` (how many previews get
pictures, those most in need first) and ``progress(done, total)``.

Documents stay JSON at these entry points (shards and baselines are files); every module reads the results in them
as :class:`harness.result.PreviewResult` records, through :func:`harness.result.results_of`."""

from .baseline import attach_baseline, compare_to_baseline, regression_count
from .build import ReportOutcome, build_report, report_main
from .documents import Shard, load_baseline, load_shards, merge_documents, merge_shards
from .html import write_diagnosis_report, write_report

__all__ = ["ReportOutcome", "Shard", "attach_baseline", "build_report", "compare_to_baseline", "load_baseline",
           "load_shards", "merge_documents", "merge_shards", "regression_count", "report_main",
           "write_diagnosis_report", "write_report"]
