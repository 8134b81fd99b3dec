"""The data domain's mapping table.

- **SQL tools** (``query_db``, ``run_sql``, ``execute_sql``, ``sql``, ``run_query``...): the SQL text
  decides. ``DROP TABLE`` / ``TRUNCATE`` / a ``DELETE`` or ``UPDATE`` with no ``WHERE`` is a destructive
  EDIT; ``INSERT`` / ``UPDATE`` / ``DELETE`` / ``MERGE`` / ``CREATE`` / ``ALTER`` / ``COPY`` is an EDIT
  with side effects; ``SELECT`` / ``WITH`` / ``EXPLAIN`` / ``SHOW`` / ``DESCRIBE`` / ``PRAGMA`` is SEARCH.
- **Table tools**: ``read_schema``, ``describe_table``, ``list_tables``, ``preview_table`` are SEARCH;
  ``write_table``, ``save_table``, ``insert_rows``, ``to_sql``, ``export_*`` are EDIT; ``drop_table``,
  ``truncate_table`` are destructive EDITs; ``load_csv`` into a table is an EDIT, without one a SEARCH.
- **Checks**: ``validate``, ``validate_data``, ``check_*``, ``run_checks``, ``data_quality``,
  ``assert_*``, ``dbt test`` are VERIFY.
- **Python / pandas code** (``python``, ``run_python``, ``execute_python``, ``pandas``): code that
  writes (``.to_sql``, ``.to_csv``, ``.to_parquet``) is an EDIT (``if_exists="replace"`` a destructive
  one), code that asserts is VERIFY, other code is EXECUTE.
"""

from __future__ import annotations

from immunity.domain import Rule

SQL_TOOLS = (r"(?i)(run|execute|exec)_?(sql|query)|query_?(db|database|sql)?|sql|sql_?query|db_?query|run_sql_query|"
             r"duckdb\w*|sqlite\w*|postgres\w*|bigquery\w*|snowflake\w*|execute|read_sql")
CODE_TOOLS = r"(?i)python|run_python|execute_python|python_repl|pandas|run_pandas|notebook|run_cell|execute_code|run_code"

_C = r"(?:^|;)\s*(?:--[^\n]*\n\s*)*"  # the start of a statement
DESTRUCTIVE_SQL = (
    rf"{_C}drop\s+(?:table|database|schema)\b|{_C}truncate\b|{_C}delete\s+from\s+[\w.\"`\[\]]+\s*(?:;|$)"
    rf"|{_C}update\s+[\w.\"`\[\]]+\s+set\b(?:(?!\bwhere\b)[^;])*(?:;|$)|{_C}alter\s+table\b[^;]*\bdrop\s+column\b"
)
WRITE_SQL = rf"{_C}(?:insert|update|delete|merge|create|alter|replace|upsert|copy|grant|revoke|drop)\b"
READ_SQL = rf"{_C}(?:select|with|explain|show|describe|desc|pragma|values)\b"

RULES: list[Rule] = [
    # SQL: the statement decides
    Rule(tool=SQL_TOOLS, action="EDIT", when=DESTRUCTIVE_SQL, confidence=0.95, side_effect=True, destructive=True,
         needs_verification=True),
    Rule(tool=SQL_TOOLS, action="EDIT", when=WRITE_SQL, confidence=0.95, side_effect=True, needs_verification=True),
    Rule(tool=SQL_TOOLS, action="SEARCH", when=READ_SQL, confidence=0.95),
    # table tools
    Rule(tool=r"(?i)drop_table|truncate_table|delete_table|drop_database|purge\w*", action="EDIT", side_effect=True,
         destructive=True, needs_verification=True),
    Rule(tool=r"(?i)(load|read|import)_(csv|parquet|json|excel|data|file)", action="EDIT",
         when=r"\"(?:table|table_name|target|target_table|into)\":", confidence=0.9, side_effect=True,
         needs_verification=True),
    Rule(tool=r"(?i)(load|read|import)_(csv|parquet|json|excel|data|file)", action="SEARCH", confidence=0.9),
    Rule(tool=r"(?i)write_\w+|save_\w+|insert_rows|append_rows|upsert\w*|to_sql|export_\w+|upload_\w+|"
              r"create_table|update_rows|delete_rows|merge_\w+|materiali[sz]e\w*|publish_\w+", action="EDIT",
         side_effect=True, needs_verification=True),
    Rule(tool=r"(?i)read_schema|get_schema|describe_table|describe|list_tables|list_columns|show_tables|"
              r"preview\w*|sample_rows|head|profile\w*|inspect\w*|get_table\w*|table_info|count_rows|row_count",
         action="SEARCH"),
    Rule(tool=r"(?i)validate\w*|check_\w+|run_checks|data_quality\w*|assert_\w+|expect\w*|dbt_test|test_\w+|"
              r"reconcile\w*|compare_counts|diff_tables", action="VERIFY"),
    Rule(tool=r"(?i)dbt|dbt_run|run_pipeline|run_dag|trigger_\w+|run_job|run_transform\w*", action="VERIFY",
         when=r"\btest\b", confidence=0.9),
    Rule(tool=r"(?i)dbt|dbt_run|run_pipeline|run_dag|trigger_\w+|run_job|run_transform\w*", action="EXECUTE"),
    # python / pandas code
    Rule(tool=CODE_TOOLS, action="EDIT", when=r"\.to_sql\([^)]*if_exists\s*=\s*['\"]replace|drop\s+table",
         confidence=0.9, side_effect=True, destructive=True, needs_verification=True),
    Rule(tool=CODE_TOOLS, action="EDIT",
         when=r"\.to_(?:sql|csv|parquet|excel|json|feather)\(|open\([^)]*['\"][wa]b?['\"]|\bexecute\(\s*['\"]\s*"
              r"(?:insert|update|delete|create|alter)", confidence=0.85, side_effect=True, needs_verification=True),
    Rule(tool=CODE_TOOLS, action="VERIFY", when=r"^\s*assert\b|\bassert\s|pd\.testing|\.equals\(|great_expectations|"
                                               r"pandera|\.validate\(", confidence=0.8),
    Rule(tool=CODE_TOOLS, action="EXECUTE", confidence=0.8),
    Rule(tool=r"(?i)plan|think|outline", action="PLAN"),
    Rule(tool=r"(?i)final_answer|submit|finish|done|report_result", action="DONE"),
]
