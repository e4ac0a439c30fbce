"""The agent's SQL lives in its store layer (``relaypacs_agent/store/``): the LAN web app, the
ingest, the uplink, the CLI and the rest ask the store's classes, never the database. The source
is walked: a SQL statement, a ``.query(`` or ``.tx(`` call, or a store's ``conn`` or ``_lock``
outside ``store/`` fails here with its file and line. import-linter keeps the database drivers
themselves inside ``store/`` (a contract in pyproject.toml); every other part of the agent must be
among that contract's source modules, so a new one cannot slip past it."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "agent/src/relaypacs_agent"

# A string that starts as a SQL statement does. The second word is required, so that English
# ("create the batch first", "delete quarantined file 3?") and the HTTP method "DELETE" are not.
SQL = re.compile(
    r"""\A\s*(?:
        SELECT\b.*\bFROM\b | SELECT\s+\d
        | INSERT\s+(?:OR\s+\w+\s+)?INTO\b
        | UPDATE\s+\w+\s+SET\b
        | DELETE\s+FROM\b
        | CREATE\s+(?:UNIQUE\s+|TEMP\w*\s+|VIRTUAL\s+)?(?:TABLE|INDEX|VIEW|TRIGGER)\b
    )""",
    re.IGNORECASE | re.DOTALL | re.VERBOSE,
)


def _docstrings(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _is_store(node: ast.expr) -> bool:
    owner = ast.unparse(node)
    return owner == "store" or owner.endswith(".store")


def findings(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of the database in ``source``."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):  # its parts are judged as the whole f-string
            skip.update(id(v) for v in node.values)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        if text is not None and SQL.match(text):
            found.append((node.lineno, f"SQL {' '.join(text.split())[:50]!r}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("query", "tx"):
                found.append((node.lineno, f"{ast.unparse(node.func)}()"))
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ("conn", "_lock")
            and _is_store(node.value)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def _by_file() -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for path in sorted(AGENT.rglob("*.py")):
        rel = path.relative_to(AGENT).as_posix()
        if rel.startswith("store/"):
            continue
        hits = findings(path.read_text(encoding="utf-8"))
        if hits:
            out[rel] = hits
    return out


def test_sql_stays_in_the_agent_store_layer() -> None:
    found = _by_file()
    bad = [
        f"agent/src/relaypacs_agent/{rel}:{line}: {what}"
        for rel, hits in found.items()
        for line, what in hits
    ]
    assert not bad, (
        "SQL outside relaypacs_agent/store/ (move it into a store class):\n" + "\n".join(bad)
    )


def test_the_import_contract_covers_every_part_of_the_agent_but_its_store() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["type"] == "forbidden" and "sqlite3" in c["forbidden_modules"]
    ]
    assert {"sqlite3", "sqlite_utils"} <= set(contract["forbidden_modules"])
    parts = {
        f"relaypacs_agent.{p.stem if p.suffix == '.py' else p.name}"
        for p in AGENT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert "relaypacs_agent.store" in parts and "relaypacs_agent.uplink" in parts
    assert set(contract["source_modules"]) == parts - {"relaypacs_agent.store"}, (
        "list every relaypacs_agent module and subpackage but store in the import-linter "
        "contract's source_modules (pyproject.toml)"
    )


def test_the_walk_sees_sql_and_only_sql() -> None:
    sample = '''
"""Select files from the inbox."""
def f(store, conn, self):
    store.query("select * from studies")
    with self.store.tx() as c:
        c.execute(f"""
            UPDATE studies SET {col} = ? WHERE id = ?""", (1, 2))
        c.execute("insert or replace into lan_meta (key, value) values (?, ?)")
        c.execute("DELETE FROM lan_sessions")
    conn.executescript("CREATE INDEX ix ON t (a)")
    with self.store._lock:
        return self.store.conn
    request("DELETE", url)
    print("create the batch first", "delete quarantined file 3?", "update the agent")
'''
    assert [line for line, _ in findings(sample)] == [4, 4, 5, 6, 8, 9, 10, 11, 12]
