"""The coding domain's mapping table: native coding actions -> universal action types.

Two families of tools are covered:

- **Shell tools** (``bash``, ``shell``, ``execute_bash``, ``run_command``, ``terminal``...), as used by
  bash-only agents such as mini-swe-agent. The tool is always the same, so the *command text* decides:
  ``grep -rn`` is SEARCH, ``sed -i`` is EDIT, ``pytest -x`` is VERIFY, ``pip install`` is EXECUTE,
  ``echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT`` or ``git commit`` is DONE.
- **Editor tools** (SWE-agent's ``str_replace_editor``, ``open``, ``search_dir``, ``submit``; generic
  ``read_file``, ``write_file``, ``apply_patch``, ``run_tests``...).

Rules are tried in order and the first match wins, so the order below is the policy:

1. finishing (``submit``, ``git commit``, the mini-swe-agent submit sentinel);
2. destructive commands (``rm -rf /``, ``git reset --hard``, ``git push --force``...);
3. test runners and linters (VERIFY). A command that edits *and then* runs the tests is a VERIFY:
   the edit is still tracked by the checks, which read the command text themselves;
4. a run of a script whose name says it checks something (``python reproduce_issue.py``,
   ``python test_fix.py``, ``./verify.sh``) is VERIFY with confidence 0.6: in bash-only agents this
   is how a fix is usually checked, but the script is the agent's own and may prove little;
5. edits (``sed -i``, writing through a redirect or a heredoc, ``git apply``, ``patch``, ``rm``,
   ``mv``, ``cp``, ``mkdir``, ``touch``, Python code that opens a file for writing);
6. reads and searches (``cat``, ``nl``, ``sed -n``, ``grep``, ``find``, ``ls``, ``git diff``...);
7. other runs (``python script.py``, ``python -c``, ``pip install``, ``make``, ``sphinx-build``) are
   EXECUTE.

A shell command no rule matches falls back to core's heuristic (EXECUTE, confidence 0.5, counted as
unmapped in :data:`immunity.domain.UNMAPPED`).
"""

from __future__ import annotations

from immunity.domain import Rule

#: Tool names treated as a shell; their command text decides the action.
SHELL_TOOLS = r"(?i)(bash|shell|sh|terminal|run_command|execute_bash|run_shell|run_bash|exec_command|execute_command|cmd)"

# The start of a simple command inside a command line: the beginning, or after ``&&``, ``||``,
# ``;``, ``|``, a newline or ``(``, then optional ``VAR=value`` assignments, ``timeout N``, ``sudo``.
SEPARATOR = r"[;&|\n(]\s*"
COMMAND_START = rf"(?:^|{SEPARATOR})"
START_WORDS = r"(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+|timeout\s+\S+\s+|sudo\s+|time\s+|env\s+)*"
_C = COMMAND_START + START_WORDS
_PY = r"(?:/usr/bin/|/usr/local/bin/)?python(?:\d(?:\.\d+)?)?"

#: The mini-swe-agent / SWE-agent submit sentinels and ``git commit``.
SUBMIT = (rf"COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT|MINI_SWE_AGENT_FINAL_OUTPUT|{_C}submit\b|{_C}git\s+commit\b")

#: Commands that destroy work or the machine. The ``destructive_command`` check explains them.
DESTRUCTIVE = (
    rf"{_C}rm\s+(?:-[a-zA-Z]*[rR][a-zA-Z]*\s+|--recursive\s+|-[a-zA-Z]+\s+)*"
    r"(?:/|/\*|~/?|\$HOME/?|\.{1,2}/?|\*|/(?:usr|etc|bin|lib|var|home|opt|boot|root|sbin)\b\S*|\.git)(?:\s|;|&|$)"
    rf"|{_C}git\s+reset\s+--hard\b|{_C}git\s+clean\s+-[a-zA-Z]*f|{_C}git\s+push\s+(?:\S+\s+)*(?:--force\b|-f\b)"
    rf"|{_C}git\s+checkout\s+(?:--\s+)?\.(?:\s|$)|{_C}mkfs\b|{_C}dd\s+.*\bof=/dev/|>\s*/dev/sd[a-z]"
    rf"|{_C}chmod\s+-R\s+[0-7]*7[0-7]*\s+/(?:\s|$)|:\(\)\s*\{{\s*:\|:&\s*\}};:"
    rf"|{_C}find\s+/\S*\s.*-delete\b"
)

#: Test runners, type checkers and linters.
TEST_RUNNER = (
    rf"{_C}(?:{_PY}\s+(?:-\S+\s+)*-m\s+)?(?:pytest|py\.test|unittest|doctest|nose2?|tox|nox|hypothesis)\b"
    rf"|{_C}(?:{_PY}\s+)?(?:\S*/)?(?:runtests\.py|run_tests\.py|runtests|manage\.py\s+test)\b"
    rf"|{_C}(?:\./)?bin/test\b|{_C}make\s+(?:test|check)\b|{_C}(?:go|cargo|npm|yarn|pnpm)\s+(?:run\s+)?test\b"
    rf"|{_C}(?:jest|mocha|vitest|phpunit|rspec|ctest)\b"
    rf"|{_C}(?:{_PY}\s+-m\s+)?(?:mypy|ruff|flake8|pylint|pyflakes|black\s+--check)\b"
)

#: Running the agent's own check script: its name says what it is for.
_CHECK_NAME = r"[\w./-]*(?:repro|reproduc|test|verify|check|validate|confirm)[\w.-]*"
CHECK_SCRIPT = rf"{_C}(?:{_PY}\s+(?:-\S+\s+)*{_CHECK_NAME}\.py|(?:bash\s+|sh\s+|\./){_CHECK_NAME}\.sh)\b"

#: Edits: in-place editors, writes through redirects / heredocs / tee, patches, file moves.
EDIT = (
    rf"{_C}(?:sed|perl)\s+(?:-\S+\s+)*-i|{_C}(?:sed|perl)\s+-i"
    rf"|{_C}(?:cat|echo|printf|{_PY}|awk|jq|sort|git\s+diff)\b[^\n]*?(?<![0-9&>])>{{1,2}}\s*(?!/dev/null|&)['\"]?"
    r"(?![0-9])[\w~-]*[./][\w./~-]*['\"]?(?=\s|$|;|&|\|)"
    rf"|{_C}tee\b|{_C}git\s+(?:apply|am|stash|restore|mv|rm|cherry-pick|revert|merge)\b|{_C}git\s+checkout\s+(?:--\s+)?\S+"
    rf"|{_C}patch\b|{_C}(?:rm|rmdir|mv|cp|mkdir|touch|ln|truncate|ed|unzip|tar\s+-?x)\b"
    r"|open\([^)]*,\s*['\"](?:w|a|r\+|wb|ab)['\"]|\.write_text\(|\.write_bytes\(|shutil\.(?:copy|move|rmtree)"
)

#: Reads and searches.
SEARCH = (
    rf"{_C}(?:cat|nl|head|tail|less|more|grep|egrep|fgrep|rg|ag|ack|find|ls|tree|wc|file|stat|du|pwd|which|"
    rf"whereis|type|diff|cmp|awk|sed|cut|sort|uniq|xxd|od|readlink|realpath|basename|dirname|locate)\b"
    rf"|{_C}sed\s+(?:-\S+\s+)*-n\b|{_C}git\s+(?:diff|log|show|status|blame|grep|ls-files|branch|rev-parse|remote)\b"
    rf"|{_C}pip\s+(?:show|list|freeze|download)\b|{_C}{_PY}\s+(?:-\S+\s+)*-m\s+pydoc\b"
)

#: Everything else that runs code.
EXECUTE = (
    rf"{_C}(?:{_PY}|node|ruby|perl|java|go\s+run|cargo\s+run|bash|sh|zsh|make|cmake|gcc|g\+\+|clang|"
    rf"sphinx-build|django-admin|pip|pip3|uv|conda|npm|yarn|pnpm|apt-get|apt|pyreverse|msgfmt|sqlite3|curl|wget|"
    rf"export|source|cd|echo|printf|sleep|true|false|set|unset|kill)\b|{_C}\./[\w./-]+"
)

RULES: list[Rule] = [
    # -- shell tools: the command text decides ------------------------------------------------
    Rule(tool=SHELL_TOOLS, action="DONE", when=SUBMIT, confidence=0.95),
    Rule(tool=SHELL_TOOLS, action="EDIT", when=DESTRUCTIVE, confidence=0.95, side_effect=True, destructive=True),
    Rule(tool=SHELL_TOOLS, action="VERIFY", when=TEST_RUNNER, confidence=0.95),
    Rule(tool=SHELL_TOOLS, action="VERIFY", when=CHECK_SCRIPT, confidence=0.6),
    Rule(tool=SHELL_TOOLS, action="EDIT", when=EDIT, confidence=0.85, side_effect=True),
    Rule(tool=SHELL_TOOLS, action="SEARCH", when=SEARCH, confidence=0.9),
    Rule(tool=SHELL_TOOLS, action="EXECUTE", when=EXECUTE, confidence=0.7),
    # -- SWE-agent's editor: the ``command`` argument decides -----------------------------------
    Rule(tool=r"(?i)str_replace_editor|str_replace_based_edit_tool|text_editor|editor", action="SEARCH",
         when=r"\"command\":\s*\"view\"", confidence=0.95),
    Rule(tool=r"(?i)str_replace_editor|str_replace_based_edit_tool|text_editor|editor", action="EDIT",
         when=r"\"command\":\s*\"(?:create|str_replace|insert|undo_edit|write)\"", confidence=0.95, side_effect=True),
    # -- named tools ---------------------------------------------------------------------------
    Rule(tool=r"(?i)submit|finish|done|complete_task|task_complete|git_commit", action="DONE"),
    Rule(tool=r"(?i)(run_)?tests?|run_pytest|pytest|check|lint|type_?check|verify", action="VERIFY"),
    Rule(tool=r"(?i)edit|edit_file|write_file|create_file|replace_in_file|insert|append_file|apply_patch|"
              r"patch|delete_file|remove_file|rename_file|move_file|undo_edit|str_replace", action="EDIT",
         side_effect=True),
    Rule(tool=r"(?i)open|open_file|goto|scroll_up|scroll_down|read_file|view_file|cat|search_dir|search_file|"
              r"find_file|grep|glob|list_dir|list_files|ls|find|search_code|code_search|get_file|"
              r"show_file|file_tree|repo_map|git_diff|git_status|git_log", action="SEARCH"),
    Rule(tool=r"(?i)python|run_python|execute_code|run_code|ipython|jupyter|pip_install|install", action="EXECUTE"),
    Rule(tool=r"(?i)think|plan|reflect", action="PLAN"),
    Rule(tool=r"(?i)ask_user|ask_human|ask_followup_question", action="RESPOND"),
]
