"""Plain-text tables that fit the terminal and survive a pipe: :func:`fit_table`.

Every table ``llem`` prints for people (``results show``, the end-of-run table, the dry-run
plan, ``images list``) goes through here. Nothing is ever cut with an ellipsis:

1. the parameters that vary between rows get a column each (short names: ``batch_size`` for
   ``pytorch.batch_size``; each backend's concurrency key shares one ``concurrency`` column);
   those the same in every row are said once, above the table;
2. when that is wider than the terminal, the varying parameters move to a legend, one line
   per row number (``#3  backend=vllm  max_num_seqs=256``), wrapped between whole pairs;
3. optional columns are dropped, highest ``priority`` number first (from ``EXTRA_PRIORITY``
   up before step 2, the rest after it), and a line says which (``--wide`` shows them).

The width is the terminal's (``COLUMNS`` first); a pipe or a file gets 80. Formatting by hand
rather than with ``rich.table`` keeps a 10,000-row plan fast and the output plain.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Width used when the output is not a terminal and ``COLUMNS`` is not set.
PIPE_WIDTH = 80
#: Never lay out narrower than this, whatever the terminal says.
MIN_WIDTH = 40
GAP = "  "
#: Columns of at least this priority are dropped before the parameters move to a legend.
EXTRA_PRIORITY = 3


def term_width() -> int:
    """The terminal's width (``COLUMNS`` first); 80 when the output is piped."""
    return max(MIN_WIDTH, shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)


@dataclass
class Column:
    """One column: a title (``\\n`` for two header lines), its cells, where they align.

    ``priority``: 0 is never dropped; higher numbers are dropped first when space runs out,
    and of equal numbers the rightmost first.
    """

    title: str
    cells: list[str]
    right: bool = False
    priority: int = 0
    _width: int | None = field(default=None, repr=False, compare=False)

    def width(self) -> int:
        """The widest line of the title or of any cell."""
        if self._width is None:
            self._width = self._measure()
        return self._width

    def _measure(self) -> int:
        title = max(len(x) for x in self.title.split("\n"))
        cells = max((len(c) for c in self.cells), default=0)
        if any("\n" in c for c in self.cells):
            cells = max(len(x) for c in self.cells for x in c.split("\n"))
        return max(title, cells)


def grid_width(columns: Sequence[Column]) -> int:
    """The width :func:`grid` gives these columns."""
    return sum(c.width() for c in columns) + len(GAP) * max(0, len(columns) - 1)


def grid(columns: Sequence[Column]) -> list[str]:
    """The columns side by side (multi-line cells allowed), a rule under the header."""
    if not columns:
        return []
    widths = [c.width() for c in columns]
    n_rows = max(len(c.cells) for c in columns)

    def block(cells: list[str]) -> list[str]:
        if not any("\n" in x for x in cells):  # the common case, fast for 10,000 rows
            return [
                GAP.join(
                    x.rjust(w) if col.right else x.ljust(w)
                    for col, w, x in zip(columns, widths, cells, strict=True)
                ).rstrip()
            ]
        parts = [x.split("\n") for x in cells]
        height = max(len(p) for p in parts)
        out = []
        for i in range(height):
            row = []
            for col, w, p in zip(columns, widths, parts, strict=True):
                text = p[i] if i < len(p) else ""
                row.append(text.rjust(w) if col.right else text.ljust(w))
            out.append(GAP.join(row).rstrip())
        return out

    titles = [c.title for c in columns]
    head = block(titles)
    lines = [*head, GAP.join("-" * w for w in widths)]
    for r in range(n_rows):
        lines.extend(block([c.cells[r] if r < len(c.cells) else "" for c in columns]))
    return lines


def wrap_pairs(prefix: str, items: Sequence[str], width: int, sep: str = "  ") -> list[str]:
    """``prefix`` then ``items`` joined by ``sep``, wrapped between items, never inside one.

    An item longer than a whole line is split across lines at the width (shown whole, never
    cut off).
    """
    indent = " " * len(prefix)
    lines: list[str] = []
    current = prefix
    fresh = True  # nothing on the current line yet but the prefix or indent
    for item in items:
        piece = item if fresh else sep + item
        if len(current) + len(piece) <= width:
            current += piece
            fresh = False
            continue
        if not fresh:
            lines.append(current.rstrip())
            current = indent
        rest = item
        room = max(1, width - len(current))
        while len(rest) > room:
            lines.append(current + rest[:room])
            rest = rest[room:]
            current = indent
            room = max(1, width - len(current))
        current += rest
        fresh = False
    lines.append(current.rstrip())
    return lines


def wrap_text(text: str, width: int, indent: str = "") -> list[str]:
    """Words of ``text`` wrapped at ``width`` (continuation lines indented)."""
    import textwrap

    return textwrap.wrap(
        text, width=width, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False
    ) or [""]


def fmt_param(value: Any) -> str:
    """A parameter value as the study file spells it (``-``: not set for this row)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class ParamLayout:
    """How the parameters of some rows are shown: varying ones per row, the rest once."""

    titles: list[str]  # one per varying column
    keys: list[list[str]]  # the full keys each column shows (several: merged concurrency keys)
    constant: dict[str, Any]
    merged_note: str | None = None

    def cells(self, params: dict[str, Any]) -> list[str]:
        """This row's value in each varying column."""
        out = []
        for keys in self.keys:
            value = None
            for k in keys:
                value = params.get(k)
                if value is not None:
                    break
            out.append(fmt_param(value))
        return out

    def pairs(self, cells: list[str]) -> list[str]:
        """A row's varying values (its :meth:`cells`) as ``title=value``, unset ones left out."""
        return [f"{t}={c}" for t, c in zip(self.titles, cells, strict=True) if c != "-"]


def _concurrency_paths() -> set[str]:
    from llenergymeasure_contract.registry import REGISTRY

    return {spec.concurrency_path for spec in REGISTRY}


def param_layout(rows: Sequence[dict[str, Any]], order: Sequence[str] = ()) -> ParamLayout:
    """Split the rows' parameters into the varying (columns) and the constant (said once).

    Args:
        rows: Each row's parameters as ``full key -> value`` (``backend``, ``model``,
            ``precision`` included where known); a missing key counts as not set.
        order: Keys to put first, in this order (the rest keep their first-seen order).
    """
    keys: list[str] = [k for k in order if any(k in r for r in rows)]
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    varying: list[str] = []
    constant: dict[str, Any] = {}
    for k in keys:
        values = {repr(r.get(k)) for r in rows}
        if len(values) > 1:
            varying.append(k)
        elif rows and rows[0].get(k) is not None:
            constant[k] = rows[0][k]
    conc = [k for k in varying if k in _concurrency_paths()]
    merged_note = None
    groups: list[list[str]] = []
    for k in varying:
        if len(conc) > 1 and k in conc:
            if k == conc[0]:
                groups.append(conc)
            continue
        groups.append([k])
    titles = []
    lasts = [g[0].rsplit(".", 1)[-1] for g in groups]
    for g, last in zip(groups, lasts, strict=True):
        if len(g) > 1:
            titles.append("concurrency")
        else:
            titles.append(last if lasts.count(last) == 1 else g[0])
    if len(conc) > 1:
        merged_note = "concurrency: " + ", ".join(conc)
    return ParamLayout(titles=titles, keys=groups, constant=constant, merged_note=merged_note)


@dataclass
class Table:
    """A table ready to fit: its number column, parameters, figures and notes."""

    numbers: list[str]  # the row labels (``1``, ``2``... as in the dry run)
    params: list[dict[str, Any]]
    columns: list[Column]
    param_order: Sequence[str] = ()
    notes: list[str] = field(default_factory=list)
    number_title: str = "#"
    same_title: str = "every row"  # the line of the parameters that do not vary
    wide_hint: str = "--wide shows every column"  # said when columns are dropped for width


def fit_table(table: Table, width: int | None = None, *, wide: bool = False) -> list[str]:
    """The lines of ``table`` within ``width`` (see the module docstring); ``wide``: no limit."""
    width = term_width() if width is None else width
    layout = param_layout(table.params, table.param_order)
    out: list[str] = []
    if layout.constant:
        same = [f"{k.rsplit('.', 1)[-1]}={fmt_param(v)}" for k, v in layout.constant.items()]
        out.extend(wrap_pairs(f"{table.same_title}: ", same, 10_000 if wide else width))
    number = Column(table.number_title, table.numbers, right=True)
    cells = [layout.cells(p) for p in table.params]
    params = [Column(t, [c[i] for c in cells]) for i, t in enumerate(layout.titles)]
    columns = list(table.columns)
    legend: list[str] = []
    dropped: list[str] = []

    def too_wide(cols: list[Column]) -> bool:
        return grid_width(cols) > width

    def drop(min_priority: int) -> None:
        while too_wide([number, *kept, *columns]):
            spare = [c for c in columns if c.priority >= min_priority]
            if not spare:
                return
            gone = max(reversed(spare), key=lambda c: c.priority)  # ties: the last first
            columns.remove(gone)
            dropped.append(gone.title.replace("\n", " "))

    kept = params
    if not wide:
        drop(EXTRA_PRIORITY)  # first what only helps, then the parameters move to a legend
        if too_wide([number, *kept, *columns]) and params:
            kept = []
            pad = max((len(n) for n in table.numbers), default=1)
            seen: set[str] = set()
            for n, c in zip(table.numbers, cells, strict=True):
                if n not in seen:  # one line per row number (a run table repeats them)
                    seen.add(n)
                    legend.extend(wrap_pairs(f"#{n.ljust(pad)}  ", layout.pairs(c) or ["-"], width))
        drop(1)
    body = [number, *kept, *columns]
    if layout.merged_note:
        out.append(layout.merged_note)
    out.extend(legend)
    if legend:
        out.append("")
    out.extend(grid(body))
    if dropped:
        out.extend(
            wrap_text(f"(not shown for width: {', '.join(dropped)}; {table.wide_hint})", width)
        )
    for note in table.notes:
        out.extend(wrap_text(note, 10_000 if wide else width, indent="  "))
    return out
