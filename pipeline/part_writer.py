"""Driver side: output rows -> committed part files and unit completion records; never writes an id twice.

Rows that carry a unit (`UNIT_COLUMN`, pipeline/resume.py) are buffered per unit and written to that unit's
own parts: when a unit's buffer reaches `rows_per_file`, when all of its expected rows have arrived, and
every `flush_s` seconds for everything pending (a crash loses at most that much). Once a unit's rows are all
in committed parts its completion record is written, and its id set is dropped: the driver's memory holds
ids only of the units in progress. A row of a unit already finished, or an id already seen in its unit
(a retried batch), is dropped. Rows without a unit (folder / WebDataset inputs, a caller's Dataset) go to
parts without a unit and are checked against one id set, as before units existed.

`finish()` after a complete stream (no --limit) records every unit read as finished: each of its rows was
either written now or skipped as already written (e.g. an input file with a repeated id never reaches its
footer count, and is recorded here).
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.progress import Progress
from pipeline.resume import UNIT_COLUMN, ResumePlan
from pipeline.sink import OutputSink

FLUSH_SECONDS = 30.0


class PartWriter:
    def __init__(self, sink: OutputSink, progress: Progress, rows_per_file: int, plan: ResumePlan | None = None,
                 flush_s: float = FLUSH_SECONDS):
        self.sink, self.progress, self.rows_per_file, self.flush_s = sink, progress, rows_per_file, flush_s
        self.plan = plan
        self.expected = dict(plan.expected) if plan and plan.units else {}  # unit -> rows still to commit
        self.finished: set[str] = set()
        self.seen: dict[str | None, set[str]] = {}  # per unit in progress (None: rows without a unit)
        self.pending: dict[str | None, list[pa.Table]] = {}
        self.pending_rows: dict[str | None, int] = {}
        self.last_flush = time.monotonic()
        self.dropped = 0  # duplicates dropped (retried batches, repeated ids)

    def add(self, table: pa.Table) -> None:
        if UNIT_COLUMN not in table.column_names:
            self._add(None, table)
        else:
            units = table.column(UNIT_COLUMN)
            table = table.drop_columns([UNIT_COLUMN])
            known = self.plan.units.files if self.plan and self.plan.units else {}
            for key in pc.unique(units).to_pylist():
                # A key the plan does not know (a path Ray spells differently) must not name parts or records:
                # such rows go to parts without a unit, whose ids a resume reads.
                self._add(key if key in known else None, table.filter(pc.equal(units, key)))
        if time.monotonic() - self.last_flush > self.flush_s:
            self.flush()

    def _add(self, unit: str | None, table: pa.Table) -> None:
        if unit in self.finished:
            self.dropped += table.num_rows
            return
        seen = self.seen.setdefault(unit, set())
        ids = table.column("id").to_pylist()
        keep = [i not in seen and not seen.add(i) for i in ids]  # also drops an id repeated inside the batch
        if not all(keep):
            table = table.filter(pa.array(keep))
            self.dropped += len(ids) - table.num_rows
        if not table.num_rows:
            return
        self.pending.setdefault(unit, []).append(table)
        self.pending_rows[unit] = self.pending_rows.get(unit, 0) + table.num_rows
        self.progress.update(table)
        if unit is not None and unit in self.expected:
            self.expected[unit] -= table.num_rows
            if self.expected[unit] <= 0:
                self._flush_unit(unit)
                self._finish_unit(unit)
                return
        if self.pending_rows[unit] >= self.rows_per_file:
            self._flush_unit(unit)

    def _flush_unit(self, unit: str | None) -> None:
        tables = self.pending.pop(unit, [])
        self.pending_rows.pop(unit, None)
        if tables:
            self.sink.write(pa.concat_tables(tables), unit=unit)

    def _finish_unit(self, unit: str) -> None:
        """Only after every row of `unit` is in committed parts."""
        plan = self.plan
        self.sink.mark_done(unit, plan.units.rel[unit], plan.unit_rows[unit])
        self.finished.add(unit)
        self.expected.pop(unit, None)
        self.seen.pop(unit, None)

    def flush(self) -> None:
        """Commit everything pending (complete rows already received are kept whatever stops the stream)."""
        for unit in list(self.pending):
            self._flush_unit(unit)
        self.last_flush = time.monotonic()

    def finish(self) -> None:
        """The stream ended complete: commit what is pending and record every unit read as finished."""
        self.flush()
        for unit in list(self.expected):
            self._finish_unit(unit)
