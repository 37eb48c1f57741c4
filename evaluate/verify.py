"""``ddpipe verify STORE [--teacher CKPT --images DIR --sample N]``: check a label store.

The library call is ``run(VerifyConfig(store=...)) -> VerifyResult``: every chunk is read and its
checksum, completeness and values checked (:func:`ddpipe.labelstore.verify_store`: ``ok``, ``problems``,
``checked_units``, ``units``). Given ``teacher`` (and ``images``), the teacher is also re-run on
``sample`` random units and compared with the stored top-k
(:func:`ddpipe.evaluate.check_teacher.check_teacher`); the result then holds ``teacher_check`` (else
``None``), ``ok`` is both and ``store_ok`` the store's check alone (in ``to_dict()`` only then). :class:`VerifyConfig` is
:class:`~ddpipe.evaluate.check_teacher.TeacherCheckConfig` with the teacher optional. The CLI exits 1
unless ``ok``. Without a teacher no torch is needed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ddpipe.config import Result, option
from .check_teacher import TeacherCheckConfig, TeacherCheckResult

__all__ = ["VerifyConfig", "VerifyResult", "run", "summary_text"]


@dataclass(frozen=True, kw_only=True)
class VerifyConfig(TeacherCheckConfig):
    """The store to check and, optionally, the teacher to re-run on some of its units."""

    teacher_required = False

    teacher: tuple[str, ...] = option((), metavar="CKPT", group="teacher check (optional)",
                                      help="also re-run this teacher (repeat for an ensemble) on --sample units and "
                                           "compare with the stored labels; plain state dicts with --model and "
                                           "--input-size")
    images: str | None = option(None, group="teacher check (optional)",
                                help="the image set the store was built for: with --teacher, and for a store with "
                                     "derived fields (relabel --derived-fields), whose every unit's sample order, crops, "
                                     "flips and mix are then recomputed and checked against the stored digest")
    storage_options: dict | None = option(None, cli=False, help="Python only: fsspec options of a store behind a URL (s3://: s3fs's, e.g. {'client_kwargs': {'endpoint_url': ...}}); the CLI takes them from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID ...)")

    def validate(self) -> None:
        super().validate()
        if self.teacher and not self.images:
            raise self.error("images (--images DIR) is required with teacher (--teacher): the check re-runs the "
                             "teacher on the images the store was built for")


@dataclass(frozen=True, kw_only=True)
class VerifyResult(Result):
    """What ``ddpipe verify`` found; the CLI exits 1 unless ``ok``."""

    ok: bool  # the store's check passed, and the teacher check when one ran
    problems: list  # one dict per problem: unit (last_unit), epoch, batch, array, error
    checked_units: int
    units: int  # units in the store
    teacher_check: TeacherCheckResult | None = None  # with --teacher: the re-run's result

    @property
    def store_ok(self) -> bool:
        """The store's check alone (no problems)."""
        return not self.problems

    def to_dict(self) -> dict:
        """``verify_store``'s keys; with a teacher check also ``store_ok`` and ``teacher_check``."""
        d = super().to_dict()
        teacher_check = d.pop("teacher_check")
        return d if self.teacher_check is None else {**d, "store_ok": self.store_ok, "teacher_check": teacher_check}


def run(config: VerifyConfig) -> VerifyResult:
    """Check the store ``config`` names (and re-run its teacher when given)."""
    from ddpipe.phase import run_phase

    return run_phase(config, VerifyConfig, _run, "verify")


def _run(config: VerifyConfig) -> VerifyResult:
    from ..labelstore import verify_store

    store = verify_store(config.store, backend=config.backend, progress=config.progress and sys.stderr.isatty(),
                         storage_options=config.storage_options, fields=_derived_fields(config))
    check = None
    if config.teacher:
        from . import check_teacher

        check = check_teacher.run(config)
    return VerifyResult(ok=bool(store["ok"] and (check is None or check.ok)), problems=store["problems"],
                        checked_units=store["checked_units"], units=store["units"], teacher_check=check)


def _derived_fields(config: VerifyConfig):
    """A derived-fields store's schedule, rebuilt from its spec and ``--images``' sizes; else None."""
    if not config.images:
        return None
    from ..labelstore import open_store
    from ..pipeline import open_source
    from ..pipeline.schedule import Schedule

    spec = open_store(config.store, storage_options=config.storage_options).spec
    if not spec.derived_fields:
        return None
    return Schedule.of_store(spec, open_source(config.images).sizes).unit


def summary_text(r: VerifyResult) -> str:
    if r.store_ok:
        rows = [f"ok: {r.checked_units} of {r.units} units checked, no problems"]
    else:
        rows = [f"{len(r.problems)} problem(s):"]
        for p in r.problems:
            span = f"-{p['last_unit']}" if "last_unit" in p else ""
            rows.append(f"  unit {p['unit']}{span} (epoch {p['epoch']}, batch {p['batch']}) {p['array']}: {p['error']}")
    if r.teacher_check is not None:
        from .check_teacher import check_teacher_text

        rows.append(check_teacher_text(r.teacher_check))
    return "\n".join(rows)
