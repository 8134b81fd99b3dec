"""Reading SQL text: statements with comments and string literals taken out, what each one does to
which table. A small scanner, not a full parser: enough to tell a read from a write and a guarded
write from a destructive one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r"'(?:[^']|'')*'")
_IDENT = r"((?:[\w$]+|\"[^\"]+\"|`[^`]+`|\[[^\]]+\])(?:\.(?:[\w$]+|\"[^\"]+\"|`[^`]+`|\[[^\]]+\]))*)"
_WRITE_TARGET = [
    ("insert", re.compile(rf"^\s*(?:insert|replace|upsert)\s+(?:or\s+\w+\s+)?(?:into\s+)?{_IDENT}", re.I)),
    ("update", re.compile(rf"^\s*update\s+(?:only\s+)?{_IDENT}", re.I)),
    ("delete", re.compile(rf"^\s*delete\s+from\s+(?:only\s+)?{_IDENT}", re.I)),
    ("merge", re.compile(rf"^\s*merge\s+into\s+{_IDENT}", re.I)),
    ("truncate", re.compile(rf"^\s*truncate\s+(?:table\s+)?{_IDENT}", re.I)),
    ("drop", re.compile(rf"^\s*drop\s+(table|database|schema|view|materialized\s+view|index)\s+(?:if\s+exists\s+)?{_IDENT}",
                        re.I)),
    ("create", re.compile(rf"^\s*create\s+(?:or\s+replace\s+)?(?:temp(?:orary)?\s+)?(?:table|view|materialized\s+view)\s+"
                          rf"(?:if\s+not\s+exists\s+)?{_IDENT}", re.I)),
    ("alter", re.compile(rf"^\s*alter\s+table\s+(?:if\s+exists\s+)?{_IDENT}", re.I)),
    ("copy", re.compile(rf"^\s*copy\s+{_IDENT}\s+from\b", re.I)),
]
_READ = re.compile(r"^\s*(?:select|with|explain|show|describe|desc|pragma|values|table)\b", re.I)
_FROM = re.compile(rf"\bfrom\s+{_IDENT}", re.I)
_JOIN = re.compile(r"\bjoin\b", re.I)
_COUNT = re.compile(rf"^\s*select\s+count\s*\(\s*(?:\*|1)\s*\)\s*(?:as\s+\w+\s*)?from\s+{_IDENT}\s*;?\s*$", re.I)
_WHERE = re.compile(r"\bwhere\b", re.I)
_DROP_COLUMN = re.compile(r"\bdrop\s+(?:column\s+)?(?!constraint|index|default|not\b)[\w\"`]+", re.I)
_SCHEMA_QUERY = re.compile(rf"^\s*(?:pragma\s+table_info\s*\(\s*['\"]?{_IDENT}|describe\s+(?:table\s+)?{_IDENT}|"
                           rf"desc\s+{_IDENT}|show\s+columns\s+from\s+{_IDENT})", re.I)


def name(ident: str | None) -> str:
    """A table name without quotes, schema-qualified names kept, lower-cased."""
    return re.sub(r"[\"`\[\]]", "", ident or "").lower()


@dataclass
class Statement:
    text: str
    kind: str                                  # select / insert / update / delete / drop / ...
    table: str | None = None
    object_type: str | None = None             # for drop: table / view / database / schema / index
    has_where: bool = False
    sources: list[str] = field(default_factory=list)
    joins: bool = False
    count_of: str | None = None                # ``SELECT COUNT(*) FROM t`` with no filter
    schema_of: str | None = None               # ``PRAGMA table_info(t)``, ``DESCRIBE t``

    @property
    def writes(self) -> bool:
        return self.kind not in ("select", "other")

    def destructive(self) -> str | None:
        """Why the statement destroys data, or ``None``."""
        if self.kind == "drop" and self.object_type in ("table", "database", "schema"):
            return f"DROP {self.object_type.upper()} {self.table}"
        if self.kind == "truncate":
            return f"TRUNCATE {self.table}"
        if self.kind == "delete" and not self.has_where:
            return f"DELETE FROM {self.table} without a WHERE clause"
        if self.kind == "update" and not self.has_where:
            return f"UPDATE {self.table} without a WHERE clause"
        if self.kind == "alter" and _DROP_COLUMN.search(self.text):
            return f"ALTER TABLE {self.table} ... DROP COLUMN"
        return None


def clean(sql: str) -> str:
    return _STRING.sub("''", _COMMENT.sub(" ", sql[:50000]))


def statements(sql: str) -> list[Statement]:
    out: list[Statement] = []
    for text in clean(sql).split(";"):
        if not text.strip():
            continue
        st = Statement(text=text.strip(), kind="other")
        for kind, rx in _WRITE_TARGET:
            m = rx.search(text)
            if m:
                st.kind = kind
                if kind == "drop":
                    st.object_type = re.sub(r"\s+", " ", m.group(1).lower())
                    st.table = name(m.group(2))
                else:
                    st.table = name(m.group(1))
                break
        else:
            if _READ.search(text):
                st.kind = "select"
        st.has_where = bool(_WHERE.search(text))
        st.sources = [name(s) for s in _FROM.findall(text) if name(s) != st.table]
        st.joins = bool(_JOIN.search(text))
        m = _COUNT.search(text)
        if m:
            st.count_of = name(m.group(1))
        m = _SCHEMA_QUERY.search(text)
        if m:
            st.schema_of = name(next(g for g in m.groups() if g))
        out.append(st)
    return out


def sql_of(arguments: dict[str, Any] | None) -> str:
    """The SQL text of a query tool's arguments."""
    for key in ("sql", "query", "statement", "statements", "command", "input", "code"):
        value = (arguments or {}).get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            return ";\n".join(str(v) for v in value)
    return ""
