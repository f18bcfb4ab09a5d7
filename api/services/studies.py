"""Studies: one teacher and every (method, seed) student, stored and queued at once.

A study expands to

- the teacher job (``kind`` train), unless the request names an existing teacher
  (``teacher_ref``: a job or a registered checkpoint);
- per seed, the no-KD control (method ``none``: the student trained alone, a
  ``train`` job, queued at once) when ``none`` is among the methods;
- per (method, seed) for every other method, a ``distill`` job whose
  ``teacher_ref`` is the teacher job: it is stored ``waiting`` and queued when the
  teacher succeeds, or fails (reason ``teacher_failed``) when it does not
  (pgd_service.lifecycle).

Everything is validated before anything is stored, and the study and all its
jobs are one transaction. Its table is :func:`api.services.groups.grouped_rows`
restricted to the study.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Caller
from api.services.groups import grouped_rows
from api.services.job_data import group_summary
from api.services.jobs import RefChecker, SpecRejected, check_quota, store_and_send
from api.services.results import ResultFilters
from pgd_core.presets import paper_distill
from pgd_core.spec import KD_METHODS, RunSpec
from pgd_service import lifecycle
from pgd_service.db.models import Job, Study
from pgd_service.settings import Settings


class StudyRejected(ValueError):
    """The request cannot become a study; ``errors`` name the fields at fault."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class Planned:
    """One job of a study before it is stored."""

    role: str  # "teacher" or "student"
    method: str
    seed: int
    spec: RunSpec


def student_spec(
    template: RunSpec, teacher: RunSpec | None, teacher_ref: str, method: str, seed: int
) -> RunSpec:
    """The study's student for (method, seed): the template with that method and seed,
    the teacher run's architecture (when the study queues one) and ``teacher_ref``;
    for ``none``, the same student trained alone (a ``train`` job)."""
    data = template.model_dump(mode="json")
    data["seed"] = seed
    if method == "none":
        data.update(kind="train", method="none", teacher=None, teacher_ref=None, distill=None)
        return RunSpec.model_validate(data)
    data.update(kind="distill", method=method, teacher_ref=teacher_ref)
    if teacher is not None:
        data["teacher"] = teacher.student.model_dump(mode="json")
    if data.get("distill") is None and method in KD_METHODS:
        data["distill"] = paper_distill(template.detector).model_dump(mode="json")
    return RunSpec.model_validate(data)


def plan(
    *,
    teacher: RunSpec | None,
    teacher_ref: str | None,
    template: RunSpec,
    methods: list[str],
    seeds: list[int],
    teacher_job_id: str,
) -> list[Planned]:
    """Every job of the study in order (teacher, then per method its seeds); raises
    StudyRejected naming the field when a combination is not a valid spec."""
    errors: list[dict[str, Any]] = []
    if teacher is not None and teacher.kind != "train":
        errors.append({"field": "teacher.kind", "message": "the teacher is a 'train' run"})
    if teacher is not None and teacher.detector != template.detector:
        errors.append(
            {
                "field": "teacher.detector",
                "message": f"'{teacher.detector}' differs from the student's '{template.detector}'",
            }
        )
    if teacher is not None and teacher.dataset.name != template.dataset.name:
        errors.append(
            {
                "field": "teacher.dataset.name",
                "message": f"'{teacher.dataset.name}' differs from the student's "
                f"'{template.dataset.name}': the teacher is trained on the students' data",
            }
        )
    if template.kind != "distill":
        errors.append({"field": "student.kind", "message": "the student template is 'distill'"})
    if template.teacher_ref is not None:
        errors.append(
            {
                "field": "student.teacher_ref",
                "message": "leave it empty: the study sets it to its teacher",
            }
        )
    if errors:
        raise StudyRejected(errors)
    jobs = [] if teacher is None else [Planned("teacher", "none", teacher.seed, teacher)]
    ref = teacher_ref or teacher_job_id
    for method in methods:
        for seed in seeds:
            try:
                spec = student_spec(template, teacher, ref, method, seed)
            except ValidationError as exc:
                raise StudyRejected(
                    [
                        {
                            "field": f"methods.{methods.index(method)}",
                            "message": f"method '{method}' with this student: "
                            + "; ".join(e["msg"] for e in exc.errors()),
                        }
                    ]
                ) from None
            jobs.append(Planned("student", method, seed, spec))
    return jobs


def create(
    *,
    db_session: Session,
    settings: Settings,
    owner: str,
    name: str | None,
    teacher: RunSpec | None,
    teacher_ref: str | None,
    template: RunSpec,
    methods: list[str],
    seeds: list[int],
    request: dict[str, Any],
    sees_all: bool = False,
) -> tuple[Study, list[Job]]:
    """Validate, store the study and its jobs in one transaction, then send the queued
    ones. Raises StudyRejected or SpecRejected."""
    teacher_job_id = str(uuid.uuid4())
    planned = plan(
        teacher=teacher,
        teacher_ref=teacher_ref,
        template=template,
        methods=methods,
        seeds=seeds,
        teacher_job_id=teacher_job_id,
    )
    checker = RefChecker.for_session(db_session, settings, owner=None if sees_all else owner)
    refs = []
    for item in planned:
        # A student's teacher job does not exist yet: its other references are checked.
        own = item.spec.model_copy(update={"teacher_ref": None}) if teacher is not None else None
        try:
            refs.append(checker.check(own or item.spec))
        except SpecRejected as exc:
            where = "teacher" if item.role == "teacher" else "student"
            raise SpecRejected(
                [{**e, "field": f"{where}.{e['field']}"} for e in exc.errors]
            ) from None
    check_quota(db_session, settings, owner, len(planned))
    study = Study(
        owner=owner,
        name=name,
        request=request,
        teacher_job_id=teacher_job_id if teacher is not None else None,
    )
    db_session.add(study)
    db_session.flush()
    rows = []
    for item, checked in zip(planned, refs, strict=True):
        is_teacher = item.role == "teacher"
        needs_teacher_job = item.spec.uses_teacher and teacher is not None
        rows.append(
            lifecycle.job_values(
                spec=item.spec,
                owner=owner,
                max_attempts=settings.max_attempts,
                study_id=study.id,
                job_id=teacher_job_id if is_teacher else None,
                teacher_job_id=teacher_job_id if needs_teacher_job else checked.teacher_job_id,
                waiting=needs_teacher_job or checked.teacher_pending,
            )
        )
    if teacher is None and teacher_ref is not None:
        study.teacher_job_id = next(
            (row["teacher_job_id"] for row in rows if row["teacher_job_id"]), None
        )
    # In order: the teacher first, as the students' foreign key points at it.
    jobs = store_and_send(db_session, settings, rows)
    return study, jobs


def get(*, db_session: Session, study_id: str, token: Caller) -> Study | None:
    """The study, or None when missing or owned by someone else (non-admin)."""
    query = select(Study).where(Study.id == study_id)
    if not token.is_admin:
        query = query.where(Study.owner == token.owner)
    return db_session.scalar(query)


def list_page(*, db_session: Session, token: Caller, limit: int, offset: int) -> list[Study]:
    """The caller's studies (every study for an admin), newest first; one more than
    ``limit`` when there is a next page."""
    query = select(Study)
    if not token.is_admin:
        query = query.where(Study.owner == token.owner)
    order = (Study.created_at.desc(), Study.id.desc())
    return list(db_session.scalars(query.order_by(*order).offset(offset).limit(limit + 1)))


def summary(*, db_session: Session, study: Study) -> tuple[dict[str, int], int, float]:
    """(jobs per state with every state present, total, mean progress) in one query."""
    return group_summary(db_session, Job.study_id == study.id)


def jobs_of(db_session: Session, study: Study) -> list[Job]:
    return list(db_session.scalars(select(Job).where(Job.study_id == study.id).order_by(Job.seq)))


def table(db_session: Session, study: Study) -> list[dict[str, Any]]:
    """The study's grouped results: the teacher first, then the methods in the order
    the study asked for them; each row with its ``role``."""
    rows = grouped_rows(db_session=db_session, filters=ResultFilters(study=study.id))
    methods = list(study.request.get("methods", []))
    teacher_id = study.teacher_job_id

    def role(row: dict[str, Any]) -> str:
        return "teacher" if teacher_id is not None and teacher_id in row["job_ids"] else "student"

    def order(row: dict[str, Any]) -> tuple[int, int]:
        if role(row) == "teacher":
            return (0, 0)
        rank = methods.index(row["method"]) if row["method"] in methods else len(methods)
        return (1, rank)

    return [{"role": role(row), **row} for row in sorted(rows, key=order)]


def chart_png(rows: list[dict[str, Any]], metric: str, title: str) -> bytes:
    """A bar per student method (mean, error bar one sd), the teacher as a line; the
    legend's numbers are also in the PNG's text chunks (pgd_core.evaluation.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pgd_core.evaluation.png import plot_text

    students = [r for r in rows if r["role"] == "student" and r[f"{metric}_mean"] is not None]
    teachers = [r for r in rows if r["role"] == "teacher" and r[f"{metric}_mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(students) + 3.5), 3.6), dpi=100)
    try:
        names = [r["method"] for r in students]
        means = [r[f"{metric}_mean"] for r in students]
        sds = [r[f"{metric}_sd"] or 0.0 for r in students]
        bars = ax.bar(names, means, yerr=sds, capsize=4, color="#4C72B0")
        for bar, r in zip(bars, students, strict=True):
            sd = "" if r[f"{metric}_sd"] is None else f" ± {r[f'{metric}_sd']:.1f}"
            bar.set_label(f"{r['method']}: {r[f'{metric}_mean']:.1f}{sd} (n={r[f'{metric}_n']})")
        for r in teachers:
            ax.axhline(
                r[f"{metric}_mean"],
                color="#C44E52",
                linestyle="--",
                label=f"teacher: {r[f'{metric}_mean']:.1f} (n={r[f'{metric}_n']})",
            )
        ax.set_ylabel(metric.upper())
        empty = not (students or teachers)
        ax.set_title(f"{title}\nno {metric.upper()} results yet" if empty else title)
        if not empty:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            fig.tight_layout()
        else:
            ax.set_axis_off()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None, **plot_text(fig)})
        return buffer.getvalue()
    finally:
        plt.close(fig)
