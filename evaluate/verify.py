"""``ddpipe verify STORE [--teacher CKPT --images DIR --sample N]``: check a label store.

The library call is ``run(VerifyConfig(store=...)) -> dict``: every chunk is read and its checksum,
completeness and values checked (:func:`ddpipe.labelstore.verify_store`: ``ok``, ``problems``,
``checked_units``, ``units``). Given ``teacher`` (and ``images``), the teacher is also re-run on
``sample`` random units and compared with the stored top-k
(:func:`ddpipe.evaluate.check_teacher.check_teacher`); the result then holds ``store_ok`` and
``teacher_check``, and ``ok`` is both. :class:`VerifyConfig` is
:class:`~ddpipe.evaluate.check_teacher.TeacherCheckConfig` with the teacher optional. The CLI exits 1
unless ``ok``. Without a teacher no torch is needed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ddpipe.config import option
from .check_teacher import TeacherCheckConfig

__all__ = ["VerifyConfig", "run", "summary_text"]


@dataclass(frozen=True, kw_only=True)
class VerifyConfig(TeacherCheckConfig):
    """The store to check and, optionally, the teacher to re-run on some of its units."""

    teacher_required = False

    teacher: tuple[str, ...] = option((), metavar="CKPT", group="teacher check (optional)",
                                      help="also re-run this teacher (repeat for an ensemble) on --sample units and "
                                           "compare with the stored labels; plain state dicts with --model and "
                                           "--input-size")
    images: str | None = option(None, group="teacher check (optional)",
                                help="with --teacher: the image set the store was built for")
    storage_options: dict | None = option(None, cli=False, help="Python only: fsspec options of a store behind a URL (s3://: s3fs's, e.g. {'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID ...)")

    def validate(self) -> None:
        super().validate()
        if self.teacher and not self.images:
            raise self.error("images (--images DIR) is required with teacher (--teacher): the check re-runs the "
                             "teacher on the images the store was built for")


def run(config: VerifyConfig) -> dict:
    from ..labelstore import verify_store

    result = verify_store(config.store, backend=config.backend, progress=config.progress and sys.stderr.isatty(),
                          storage_options=config.storage_options)
    if config.teacher:
        from . import check_teacher

        check = check_teacher.run(config)
        result = {**result, "ok": bool(result["ok"] and check.ok), "store_ok": result["ok"],
                  "teacher_check": check.to_dict()}
    return result


def summary_text(r: dict) -> str:
    if r.get("store_ok", r["ok"]):
        rows = [f"ok: {r['checked_units']} of {r['units']} units checked, no problems"]
    else:
        rows = [f"{len(r['problems'])} problem(s):"]
        for p in r["problems"]:
            span = f"-{p['last_unit']}" if "last_unit" in p else ""
            rows.append(f"  unit {p['unit']}{span} (epoch {p['epoch']}, batch {p['batch']}) {p['array']}: {p['error']}")
    if "teacher_check" in r:
        from .check_teacher import check_teacher_text

        rows.append(check_teacher_text(r["teacher_check"]))
    return "\n".join(rows)
