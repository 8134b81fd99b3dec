"""The coding mapping table on realistic tool calls, through the installed plugin."""

from __future__ import annotations

import pytest
from immunity.domain import UNMAPPED
from immunity.models import ActionType
from immunity.runtime import Runtime

BASH = [
    ("grep -rn \"def separability_matrix\" astropy/modeling/", "SEARCH"),
    ("nl -ba django/db/models/query.py | sed -n '690,705p'", "SEARCH"),
    ("sed -n '360,390p' src/_pytest/nodes.py", "SEARCH"),
    ("cat sympy/core/basic.py", "SEARCH"),
    ("find . -name \"*.py\" -path \"*forms*\" | head -20", "SEARCH"),
    ("ls -la tests/", "SEARCH"),
    ("git diff", "SEARCH"),
    ("sed -i 's/if s_vmin < 0:/if s_vmin <= 0:/' lib/matplotlib/image.py", "EDIT"),
    ("cat <<'EOF' > reproduce_issue.py\nfrom sympy import Eq\nprint(Eq(1, 1))\nEOF", "EDIT"),
    ("python3 - <<'EOF'\nwith open('django/core/validators.py', 'w') as f:\n    f.write(src)\nEOF", "EDIT"),
    ("git apply fix.patch", "EDIT"),
    ("rm reproduce_issue.py check_attributes.py", "EDIT"),
    ("git checkout astropy/table/table.py", "EDIT"),
    ("pytest astropy/modeling/tests/test_separable.py -x", "VERIFY"),
    ("python -m pytest tests/test_utils.py -k parse", "VERIFY"),
    ("cd /testbed && ./tests/runtests.py forms_tests.field_tests", "VERIFY"),
    ("python3 tests/runtests.py select_related defer", "VERIFY"),
    ("bin/test sympy/printing/tests/test_latex.py", "VERIFY"),
    ("tox -e py311", "VERIFY"),
    ("python -m unittest discover", "VERIFY"),
    ("python reproduce_issue.py", "VERIFY"),
    ("sed -i 's/a/b/' pkg/mod.py && python -m pytest tests/test_mod.py", "VERIFY"),
    ("python debug_mul.py", "EXECUTE"),
    ("python3 -c \"import django; print(django.get_version())\"", "EXECUTE"),
    ("pip install -e .", "EXECUTE"),
    ("sphinx-build -b html docs docs/_build", "EXECUTE"),
    ("echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached", "DONE"),
    ("git add -A && git commit -m 'Fix separability for nested models'", "DONE"),
]


@pytest.fixture
def rt():
    runtime = Runtime(store=":memory:", domain="coding")
    yield runtime
    runtime.close()


def test_the_plugin_registers_the_coding_domain(rt: Runtime) -> None:
    domain = rt.domain("coding")
    assert domain is not None and domain.name == "coding"
    assert {c.__name__ for c in domain.checks} == {"destructive_command", "unverified_finish", "out_of_scope_edit",
                                                   "repeated_failing_command"}


@pytest.mark.parametrize("command,expected", BASH)
def test_bash_commands_map_by_their_text(rt: Runtime, command: str, expected: str) -> None:
    m = rt.map_action("bash", {"command": command})
    assert m.action_type == ActionType(expected), command
    assert m.mapped_by == "coding"


@pytest.mark.parametrize("command", ["rm -rf /", "cd /testbed && rm -rf ~", "rm -rf .", "git reset --hard HEAD~3",
                                     "git push --force origin main", "git clean -fdx", "rm -rf .git"])
def test_destructive_commands_are_destructive_edits(rt: Runtime, command: str) -> None:
    m = rt.map_action("bash", {"command": command})
    assert m.action_type == ActionType.EDIT and m.destructive and m.side_effect


def test_scratch_cleanup_is_not_destructive(rt: Runtime) -> None:
    m = rt.map_action("bash", {"command": "rm -rf testapp reproduce_issue.py"})
    assert m.action_type == ActionType.EDIT and not m.destructive


@pytest.mark.parametrize("tool,arguments,expected", [
    ("str_replace_editor", {"command": "view", "path": "/testbed/src/app.py"}, "SEARCH"),
    ("str_replace_editor", {"command": "str_replace", "path": "/testbed/src/app.py", "old_str": "a", "new_str": "b"},
     "EDIT"),
    ("str_replace_editor", {"command": "create", "path": "/testbed/repro.py", "file_text": "print(1)"}, "EDIT"),
    ("open", {"path": "src/app.py", "line_number": 10}, "SEARCH"),
    ("search_dir", {"search_term": "separability", "dir": "astropy"}, "SEARCH"),
    ("edit", {"start": 10, "end": 12, "replacement": "x = 1"}, "EDIT"),
    ("submit", {}, "DONE"),
    ("run_tests", {"path": "tests/"}, "VERIFY"),
    ("write_file", {"path": "src/app.py", "content": "x"}, "EDIT"),
])
def test_editor_tools(rt: Runtime, tool: str, arguments: dict, expected: str) -> None:
    assert rt.map_action(tool, arguments).action_type == ActionType(expected)


def test_an_unknown_tool_falls_back_to_the_heuristic_and_is_counted(rt: Runtime) -> None:
    before = UNMAPPED[("coding", "frobnicate_repo")]
    from immunity.testing import FakeRun

    run = FakeRun(rt, domain="coding")
    run.tool("frobnicate_repo", {"x": 1})
    step = run.state.last_step
    assert step.data["mapped_by"] == "heuristic"
    assert UNMAPPED[("coding", "frobnicate_repo")] == before + 1


# one command per alternative of the slowest expressions, in several cases
_ALTERNATIVES = [
    "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT", "echo MINI_SWE_AGENT_FINAL_OUTPUT", "submit", "SUBMIT",
    "cd x && git commit -m fix", "GIT COMMIT", "rm -rf /", "sudo rm -r ~/", "git reset --hard", "git clean -fd",
    "git push origin main --force", "git checkout -- .", "mkfs.ext4 /dev/sda1", "MKFS /dev/sda",
    "dd if=/dev/zero of=/dev/sda", "echo x > /dev/sdb", "chmod -R 777 /", ":(){ :|:& };:", "find / -name x -delete",
    "timeout 60 pytest -x", "PYTHONPATH=. py.test", "python -m unittest", "python -m doctest x.py", "nose2",
    "nosetests", "tox -e py", "nox -s tests", "hypothesis write x", "./runtests.py", "python run_tests.py",
    "python manage.py test app", "bin/test", "make test", "make check", "go test ./...", "cargo test",
    "npm run test", "yarn test", "pnpm test", "jest", "mocha", "vitest", "phpunit", "rspec", "ctest", "mypy .",
    "ruff check", "flake8", "pylint pkg", "pyflakes x.py", "black --check .", "PYTEST -X", "Make Test",
    "grep -rn rm .", "echo firm && ls", "cat test.py", "sed -n 1,5p x.py", "python reproduce.py",
]


@pytest.mark.parametrize("command", _ALTERNATIVES + [c for c, _ in BASH])
def test_the_cached_fast_mapping_is_the_rules_mapping(command: str) -> None:
    """The coding domain's cache and faster search give exactly what the plain rule table gives."""
    from immunity.domain import Domain
    from immunity_coding import DOMAIN, RULES

    plain = Domain(name="coding", rules=RULES)
    for text in (command, command.upper(), command.lower(), f"cd /testbed && {command}"):
        assert DOMAIN.map_action("bash", {"command": text}) == plain.map_action("bash", {"command": text}), text
        assert DOMAIN.map_action("bash", {"command": text}) == plain.map_action("bash", {"command": text}), text


def test_the_mapping_cache_is_bounded() -> None:
    from immunity_coding import DOMAIN

    for i in range(5000):
        DOMAIN.map_action("bash", {"command": f"cat file{i}.py"})
    assert DOMAIN._cached.cache_info().currsize <= 4096
