"""The coding domain's faster expression search gives the plain search's answer on every command
of a varied corpus: realistic SWE-bench style commands, every alternative of every expression,
command-start words, separators, heredocs, pipes, upper/lower case, non-ASCII text (including the
letters ``re.I`` folds onto ASCII ones: long s, Kelvin sign, dotless i) and seeded random mixes."""

from __future__ import annotations

import random
import re

import pytest
from immunity.domain import Domain
from immunity_coding import DOMAIN, RULES, mapping
from immunity_coding.shell_match import alternatives, searcher

EXPRESSIONS = {name: getattr(mapping, name) for name in
               ("SUBMIT", "DESTRUCTIVE", "TEST_RUNNER", "CHECK_SCRIPT", "EDIT", "SEARCH", "EXECUTE")}

COMMANDS = [
    # realistic mini-swe-agent commands
    "grep -rn \"def separability_matrix\" astropy/modeling/", "nl -ba django/db/models/query.py | sed -n '690,705p'",
    "cd /testbed && sed -n '360,390p' src/_pytest/nodes.py", "cat sympy/core/basic.py", "git diff", "git status",
    "find . -name \"*.py\" -path \"*forms*\" | head -20", "ls -la tests/", "git log --oneline -5",
    "sed -i 's/if s_vmin < 0:/if s_vmin <= 0:/' lib/matplotlib/image.py", "perl -pi -e 's/a/b/' x.py",
    "cat <<'EOF' > reproduce_issue.py\nfrom sympy import Eq\nprint(Eq(1, 1))\nEOF",
    "cat <<'EOF' > /testbed/test_fix.py\nimport os\nos.system('rm -rf /')\nEOF\npython /testbed/test_fix.py",
    "python3 - <<'EOF'\nwith open('django/core/validators.py', 'w') as f:\n    f.write(src)\nEOF",
    "python - <<'PY'\nfrom pathlib import Path\np = Path('a.py')\np.write_text(p.read_text().replace('x', 'y'))\nPY",
    "git apply fix.patch", "rm reproduce_issue.py check_attributes.py", "git checkout astropy/table/table.py",
    "pytest astropy/modeling/tests/test_separable.py -x", "python -m pytest tests/test_utils.py -k parse",
    "cd /testbed && ./tests/runtests.py forms_tests.field_tests", "python3 tests/runtests.py select_related defer",
    "bin/test sympy/printing/tests/test_latex.py", "tox -e py311", "python -m unittest discover",
    "python reproduce_issue.py", "sed -i 's/a/b/' pkg/mod.py && python -m pytest tests/test_mod.py",
    "python debug_mul.py", "python3 -c \"import django; print(django.get_version())\"", "pip install -e .",
    "sphinx-build -b html docs docs/_build", "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached",
    "git add -A && git commit -m 'Fix separability for nested models'", "echo MINI_SWE_AGENT_FINAL_OUTPUT",
    "cd /testbed && python -c \"from sympy import *; print(simplify(x**2))\" 2>&1 | tail -5",
    "PYTHONPATH=/testbed timeout 60 python -m pytest -q tests/ 2>&1 | tail -20",
    "export DJANGO_SETTINGS_MODULE=tests.settings && cd tests && python runtests.py auth_tests",
    "(cd docs && make html)", "make -C docs html", "echo 'rm -rf /' > notes.txt", "grep -n 'pytest' setup.cfg",
    "python -c 'import os; os.system(\"pytest\")'", "ls; pwd; whoami", "true || false", "sleep 1 && echo done",
    "mv a.py b.py", "cp -r src/ backup/", "mkdir -p build && touch build/.keep", "ln -s a b", "truncate -s 0 x.log",
    "tar -xzf pkg.tar.gz", "unzip x.zip", "tee out.txt < in.txt", "git stash && git stash pop", "patch -p1 < fix.diff",
    "awk '{print $1}' x.txt > y.txt", "jq . in.json > out.json", "sort x | uniq -c", "git diff > changes.patch",
    "echo hi > /dev/null", "echo hi 2>&1", "printf 'a' >> log.txt", "python x.py > out.log",
    "curl -s https://example.com", "wget http://x/y", "node index.js", "cargo run", "go run main.go", "./configure",
    "./verify.sh", "bash check_fix.sh", "sh validate.sh", "python3.11 -W ignore confirm_bug.py",
    "/usr/bin/python3 -m mypy src", "ruff check .", "black --check .", "flake8 x.py", "npm test", "yarn run test",
    "go test ./...", "cargo test", "make check", "make test", "ctest", "jest --watch", "mocha", "vitest", "rspec",
    "phpunit", "nox -s tests", "hypothesis write x", "python manage.py test app", "py.test -q", "nose2", "nosetests",
    "python -m doctest x.py", "python -m pydoc os", "pip show django", "pip list", "pip freeze", "git blame x.py",
    "git rev-parse HEAD", "git remote -v", "git ls-files | wc -l", "git branch -a", "git grep foo",
    "git reset --hard HEAD~1", "git clean -fdx", "git push origin main --force", "git push -f", "git checkout -- .",
    "git checkout .", "mkfs.ext4 /dev/sda1", "dd if=/dev/zero of=/dev/sda bs=1M", "echo x > /dev/sdb",
    "chmod -R 777 /", ":(){ :|:& };:", "find / -name '*.pyc' -delete", "find /tmp -name x -delete",
    "rm -rf /", "rm -rf ~", "rm -rf $HOME/", "rm -rf .", "rm -rf ..", "rm -rf *", "rm -rf /usr/lib", "rm -rf .git",
    "sudo rm -r ~/", "rm -fr /etc", "rm --recursive /", "rm -rf ./build", "rm -rf /tmp/x", "submit", "SUBMIT",
    "git rebase main", "git cherry-pick abc", "git revert HEAD", "git merge dev", "git am < p", "git restore x.py",
    "git mv a b", "git rm x", "ed x.py", "rmdir d", "apt-get install -y x", "conda install x", "uv pip install x",
    "source venv/bin/activate", "set -e", "unset X", "kill 1", "sqlite3 db.sqlite 'select 1'", "msgfmt x.po",
    "pyreverse pkg", "django-admin startproject x", "gcc x.c", "g++ x.cpp", "clang x.c", "cmake ..", "zsh x.zsh",
    "java Main", "ruby x.rb", "perl x.pl", "less x", "more x", "head -5 x", "tail -f x", "rg foo", "ag foo", "ack foo",
    "tree -L 2", "file x", "stat x", "du -sh .", "which python", "whereis python", "type ls", "diff a b", "cmp a b",
    "cut -d: -f1 x", "xxd x", "od -c x", "readlink -f x", "realpath x", "basename x", "dirname x", "locate x",
    "egrep x y", "fgrep x y", "wc -l x", "", " ", "\n", ";", "&&", "|", "(", "((", ";;;", "x=1", "X=1 Y=2 ",
    "timeout", "timeout 5", "sudo", "time", "env", "echo", "testbed", "cd /testbed", "add", "odd", "firm",
]

PREFIXES = ["", "  ", "X=1 ", "A_B=c=d ", "timeout 30 ", "TIMEOUT 5s ", "sudo ", "time ", "env ", "env X=1 ",
            "sudo timeout 9 X= ", "timeout\t10\t", "ſudo ", "tımeout 5 ", "ENV\n"]
JOINS = [" && ", " || ", "; ", ";", " | ", "|", "\n", "\n\n  ", "(", "$(", " & ", " &", "\t;\t", " ;\n "]
ODD = ["ſubmit", "Kelvin: \u212a", "rm -rf /\u00a0", "ıls", "ＰＹＴＥＳＴ", "pytest\u200b", "é && ls", "git\u00a0commit",
       "mkfß", "cat ü.py", "python -m pytest ✓", "echo '🚀' > x.py", "rm -rf ~\u3000", "ls\u2028pytest"]


def _corpus() -> list[str]:
    out: list[str] = []
    base = COMMANDS + ODD
    for cmd in base:
        out += [cmd, cmd.upper(), cmd.lower(), cmd.title()]
        for p in PREFIXES:
            out.append(p + cmd)
    for i, cmd in enumerate(base):
        for j, join in enumerate(JOINS):
            other = base[(i * 7 + j * 13) % len(base)]
            out += [f"cd /testbed{join}{cmd}", f"{other}{join}{cmd}", f"{cmd}{join}{PREFIXES[j % len(PREFIXES)]}{other}"]
    rng = random.Random(15)
    pieces = base + PREFIXES + JOINS + ODD + ["'", '"', "<<'EOF'\n", "\nEOF\n", " > ", " >> ", "2>&1", " -", "=",
                                               "/", "./", "python", "test", "ſ", "\u212a"]
    for _ in range(3000):
        out.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))))
    return out


CORPUS = _corpus()


def test_the_corpus_is_large_and_varied() -> None:
    assert len(set(CORPUS)) > 5000
    assert any(not c.isascii() for c in CORPUS)
    assert any("<<'EOF'" in c for c in CORPUS)
    # every expression both matches and fails somewhere in it
    for expr in EXPRESSIONS.values():
        found = [bool(re.search(expr, c, re.I | re.S)) for c in CORPUS]
        assert any(found) and not all(found), expr


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_the_fast_search_is_the_plain_search(name: str) -> None:
    expr = EXPRESSIONS[name]
    plain = re.compile(expr, re.I | re.S)
    fast = searcher(expr)
    wrong = [c for c in CORPUS if fast(c) != (plain.search(c) is not None)]
    assert wrong == []


def test_the_coding_mapping_is_the_plain_rule_table() -> None:
    plain = Domain(name="coding", rules=RULES)
    for tool in ("bash", "BASH", "execute_bash", "str_replace_editor", "run_tests", None):
        for text in CORPUS[:: 1 if tool == "bash" else 7]:
            args = {"command": text} if tool else None
            assert DOMAIN.map_action(tool, args, text) == plain.map_action(tool, args, text), (tool, text)


@pytest.mark.parametrize("expr", [
    r"a|b", r"(?:a|b)c|d", r"[|]x|y", r"[]|]z|w", r"[^]|]q|r", r"\|s|t", r"(a|(b|c))|[\]|]d", r"x(?=a|b)|y",
    r"(?:^|[;&|\n(]\s*)(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+|timeout\s+\S+\s+|sudo\s+|time\s+|env\s+)*rm\b|WORD",
    r"(?i)A|b", r"Word|word2|[0-9]+",
])
def test_other_expressions_split_and_search_the_same(expr: str) -> None:
    assert "|".join(alternatives(expr)) == expr
    for part in alternatives(expr):
        re.compile(part)  # every alternative is a whole expression on its own
    plain = re.compile(expr, re.I | re.S)
    fast = searcher(expr)
    texts = ["a", "b", "c", "ac", "|x", "]z", "]q", "|s", "]d", "xa", "y", "rm -rf", "ls && rm x", "x=1 rm", "word",
             "WORD", "wORd2", "ſ", "\u212a", "12", "", "A", "sudo  rm"] + CORPUS[:200]
    assert [fast(t) for t in texts] == [plain.search(t) is not None for t in texts]
