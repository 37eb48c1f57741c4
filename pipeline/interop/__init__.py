"""ddpipe.pipeline.interop: import and export the label folders of SRe2L, LPLD, LPQLD, G-VBSM and FKD.

``run_import(ImportConfig(...)) -> ImportResult`` is ``ddpipe import``;
``run_export(ExportConfig(...)) -> ExportResult`` is ``ddpipe export``. Folders are read with
``torch.load(weights_only=True)`` and a numpy allow-list (:mod:`~ddpipe.pipeline.interop.safe_load`);
layouts and what is kept exactly: ``docs/interop.md``.
"""

from .errors import InteropError
from .exporter import ExportConfig, ExportResult, export_refusal, run_export
from .folders import FORMATS, BatchRecord, LabelFolder, detect_format, open_folder
from .importer import ImportConfig, ImportResult, run_import
from .safe_load import ALLOWED_GLOBALS, load_label_file

__all__ = [
    "ALLOWED_GLOBALS",
    "FORMATS",
    "BatchRecord",
    "ExportConfig",
    "ExportResult",
    "ImportConfig",
    "ImportResult",
    "InteropError",
    "LabelFolder",
    "detect_format",
    "export_refusal",
    "load_label_file",
    "open_folder",
    "run_export",
    "run_import",
]
