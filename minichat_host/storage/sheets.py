"""Cells of a spreadsheet, for the `local` provider's simulated code interpreter (openpyxl)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import BinaryIO, Final

from openpyxl import load_workbook

Cell = str | int | float | bool | None

MAX_ROWS: Final = 1000
MAX_COLUMNS: Final = 50


def _cell(value: object) -> Cell:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return str(value)


def read_sheet(path: Path, *, max_rows: int = MAX_ROWS, max_columns: int = MAX_COLUMNS) -> list[list[Cell]]:
    """The cached values of the workbook's first sheet, row by row, trailing empty cells dropped.

    Read-only mode streams the sheet, so a large workbook costs at most `max_rows` rows of memory.
    Formulas give their last computed value (what Excel saved), not the formula text.
    """
    # A file object, not the path: openpyxl judges a path by its extension, and stored files have none.
    with Path(path).open("rb") as handle:
        return _read(handle, max_rows, max_columns)


def _read(handle: BinaryIO, max_rows: int, max_columns: int) -> list[list[Cell]]:
    workbook = load_workbook(handle, read_only=True, data_only=True)
    try:
        if not workbook.worksheets:
            return []
        rows: list[list[Cell]] = []
        for raw in workbook.worksheets[0].iter_rows(max_col=max_columns, values_only=True):
            row = [_cell(value) for value in raw]
            while row and row[-1] is None:
                row.pop()
            rows.append(row)
            if len(rows) >= max_rows:
                break
        while rows and not rows[-1]:
            rows.pop()
        return rows
    finally:
        workbook.close()
