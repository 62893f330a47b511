"""The documentation hangs together and matches the code: every relative markdown link in README.md, CHANGELOG.md
and docs/*.md points to a file that exists, the README stays a short front door, every command of the fenced
``bash`` blocks parses with its entry point's real parser (and the flags of inline ``python ...`` spans exist), and
the facts the pages state (test files, run-folder exclusions, sweep grids, the digits teacher, the method table's
CKD paper grids) are read off the code."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from helper.options import PathKind, build_student_parser, build_teacher_parser
from tests.conftest import ROOT

README_MAX_LINES = 250
# pages other work is writing; links to them may dangle until they land (empty when none is pending)
PENDING_PAGES: tuple[str, ...] = ()

# [text](target) and ![alt](target); the target ends at the first space or closing parenthesis
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line number, target without its #anchor) of every relative link of ``page``, outside code blocks."""
    found: list[tuple[int, str]] = []
    in_code = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_code = not in_code
            continue
        if in_code:
            continue
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE) or target.startswith("#"):
                continue  # an absolute URL (https:, mailto:) or an anchor on the same page
            found.append((number, target.split("#", 1)[0]))
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    pending = {(ROOT / p).resolve() for p in PENDING_PAGES}
    broken = [f"{page.relative_to(ROOT)}:{number}: {target}" for number, target in relative_links(page)
              if not (page.parent / target).resolve().exists() and (page.parent / target).resolve() not in pending]
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_the_link_check_sees_links() -> None:
    links = [target for _, target in relative_links(ROOT / "README.md")]
    assert "docs/README.md" in links and "CHANGELOG.md" in links


def test_readme_is_short() -> None:
    count = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; keep it at most {README_MAX_LINES} (move detail to docs/)"


# ---------------------------------------------------------------- every documented command parses
# a python command's script resolves in one of these folders; pass-through flags go to train_student.py's parser
ENTRY_FOLDERS = ("", "scripts/", "benchmarks/")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"^(.*/)?python(\d+(\.\d+)?)?$")
# placeholders the prose uses in inline commands (`python train_student.py --name=value ...`)
INLINE_PLACEHOLDER_FLAGS = {"--name"}
MIN_FENCED_PYTHON_COMMANDS = 25  # the python commands of the fenced blocks: 30 when this was written


@dataclass(frozen=True)
class DocCommand:
    where: str  # page:line
    argv: tuple[str, ...]  # the command, without environment assignments


def fenced_lines(page: Path, languages: tuple[str, ...] = ("bash",)) -> list[tuple[int, str]]:
    """(line number, text) of every line inside a fenced block of one of ``languages`` (nested fences in lists too)."""
    found: list[tuple[int, str]] = []
    language: str | None = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*(```|~~~)\s*(\S*)", line)
        if fence:
            language = None if language is not None else fence.group(2)
            continue
        if language in languages:
            found.append((number, line))
    return found


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of one logical shell line: comments dropped, split at ``&&``, ``|``, ``;``, ``&``, without
    redirections (``> FILE``, ``2>&1``) and leading ``VAR=value`` assignments."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens = list(lexer)
    commands: list[list[str]] = [[]]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.isdigit() and i + 1 < len(tokens) and tokens[i + 1][0] in "<>":
            i += 1  # the file descriptor of a redirection (2>...)
            continue
        if token[0] in "<>" or token == "&>":
            i += 2  # a redirection and its target
            continue
        if token in SHELL_OPERATORS:
            commands.append([])
        elif commands[-1] or not ASSIGNMENT.match(token):
            commands[-1].append(token)
        i += 1
    return [c for c in commands if c]


def fenced_commands(page: Path) -> list[DocCommand]:
    """Every simple command of the ``bash`` blocks of ``page``, continuation lines joined."""
    found: list[DocCommand] = []
    pending, start = "", 0
    for number, line in fenced_lines(page):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        for argv in split_commands(pending + line):
            found.append(DocCommand(f"{page.relative_to(ROOT)}:{start}", tuple(argv)))
        pending = ""
    return found


def _path_types_as_text(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser with its path flags taking any text: documented paths (save/student, a checkpoint) need not exist
    where the test runs; every other type and choice is the script's own."""
    for action in parser._actions:
        if isinstance(action.type, PathKind):
            action.type = str
    return parser


def entry_parsers(script: str) -> tuple[argparse.ArgumentParser, str]:
    """The parser of an entry point and how it passes flags on to train_student.py ('' none, '--' after a bare --,
    'unknown' the flags its parser does not know)."""
    if script == "train_student.py":
        return build_student_parser(), ""
    if script == "train_teacher.py":
        return build_teacher_parser(), ""
    module = importlib.import_module(script.removesuffix(".py").replace("/", "."))
    assert hasattr(module, "build_parser"), f"{script} has no build_parser(); the docs test parses its commands with it"
    passing = {"scripts/sweep.py": "--", "benchmarks/bench.py": "unknown"}.get(script, "")
    return module.build_parser(), passing


def script_of(argv: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """(script relative to the checkout, its arguments) of a ``python SCRIPT ...`` command; None for ``python -m/-c``
    and other commands. A script that is not in the checkout fails."""
    if not PYTHON.match(argv[0]):
        return None
    args = list(argv[1:])
    while args and args[0].startswith("-"):
        if args[0] in ("-m", "-c"):
            return None
        args.pop(0)  # an interpreter option such as -P or -u
    assert args, f"python without a script: {argv}"
    script = next((f"{folder}{args[0].removeprefix('./')}" for folder in ENTRY_FOLDERS
                   if (ROOT / folder / args[0].removeprefix("./")).is_file() and args[0].startswith(folder)), None)
    assert script is not None, f"{args[0]} is not a script of this checkout"
    return script, args[1:]


def parse_documented(script: str, args: list[str]) -> str | None:
    """None when ``args`` parse with the entry point's real parser (no --help, nothing run), else the error."""
    parser, passing = entry_parsers(script)
    parser = _path_types_as_text(parser)
    student = _path_types_as_text(build_student_parser())
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            if passing == "--" and "--" in args:
                cut = args.index("--")
                parser.parse_args(args[:cut])
                student.parse_args(args[cut + 1:])
            elif passing == "unknown":
                _, extra = parser.parse_known_args(args)
                student.parse_args(extra)
            else:
                parser.parse_args(args)
    except SystemExit as stop:
        return errors.getvalue().strip() or f"exit {stop.code}"
    return None


def shell_script_options(path: Path) -> set[str]:
    """The options a shell script's ``case`` accepts (``--only)``, ``-h|--help)``)."""
    text = path.read_text(encoding="utf-8")
    return {option for arm in re.findall(r"^\s*((?:-{1,2}[a-z][a-z0-9_-]*\|?)+)\)", text, flags=re.MULTILINE)
            for option in arm.split("|") if option}


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9_-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), flags=re.MULTILINE))


def check_command(command: DocCommand) -> tuple[str, str | None]:
    """(kind, problem): kind is 'python', 'shell', 'make' or 'other'; problem None when the command is right."""
    argv = command.argv
    found = script_of(argv)
    if found is not None:
        return "python", parse_documented(*found)
    if PYTHON.match(argv[0]):
        return "other", None  # python -m / -c
    if argv[0] in ("sh", "bash") and len(argv) > 1 and argv[1].endswith(".sh"):
        path = ROOT / argv[1]
        if not path.is_file():
            return "shell", f"{argv[1]} does not exist"
        wrapped = re.search(r"exec .*\$ROOT/((?:scripts|benchmarks)/\w+\.py)", path.read_text(encoding="utf-8"))
        if wrapped:  # a thin wrapper over a Python entry point: its parser is the real one
            return "shell", parse_documented(wrapped.group(1), list(argv[2:]))
        unknown = [a.split("=")[0] for a in argv[2:] if a.startswith("-") and a.split("=")[0] not in shell_script_options(path)]
        return "shell", f"{argv[1]} has no option {unknown}" if unknown else None
    if argv[0] == "make":
        unknown = [t for t in argv[1:] if not t.startswith("-") and "=" not in t and t not in make_targets()]
        return "make", f"the Makefile has no target {unknown}" if unknown else None
    return "other", None


def all_fenced_commands() -> list[DocCommand]:
    return [c for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for c in fenced_commands(page)]


def python_block_commands() -> list[DocCommand]:
    """The argument lists the ``python`` blocks pass to ``parse_student_args([...])`` / ``parse_teacher_args([...])``,
    as the command lines they stand for."""
    import ast

    scripts = {"parse_student_args": "train_student.py", "parse_teacher_args": "train_teacher.py"}
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = fenced_lines(page, languages=("python",))
        blocks: list[list[tuple[int, str]]] = []
        for number, line in lines:
            if not blocks or number != blocks[-1][-1][0] + 1:
                blocks.append([])
            blocks[-1].append((number, line))
        for block in blocks:
            tree = ast.parse("\n".join(line for _, line in block))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in scripts and node.args:
                    argv = ast.literal_eval(node.args[0])
                    where = f"{page.relative_to(ROOT)}:{block[0][0] + node.lineno - 1}"
                    found.append(DocCommand(where, ("python", scripts[node.func.id], *argv)))
    return found


def test_every_fenced_command_parses_with_its_entry_points_parser() -> None:
    kinds: dict[str, int] = {}
    problems = []
    assert python_block_commands(), "README's From Python block builds a configuration from flags"
    for command in all_fenced_commands() + python_block_commands():
        try:
            kind, problem = check_command(command)
        except AssertionError as err:
            kind, problem = "python", str(err)
        kinds[kind] = kinds.get(kind, 0) + 1
        if problem:
            problems.append(f"{command.where}: {' '.join(command.argv)}\n    {problem}")
    assert not problems, "documented commands that no longer parse:\n" + "\n".join(problems)
    assert kinds.get("python", 0) >= MIN_FENCED_PYTHON_COMMANDS, kinds
    assert kinds.get("make", 0) >= 4 and kinds.get("shell", 0) >= 5, kinds


def inline_python_commands() -> list[DocCommand]:
    """`python ...` code spans of the prose (outside fenced blocks): checked for their flag names only, since they
    carry placeholders (FILE, NAME, ...) and deliberately bad values (docs/reliability.md)."""
    found = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        fenced = {number for number, _ in fenced_lines(page, languages=("", "bash", "python", "bibtex", "text"))}
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if number in fenced:
                continue
            for span in re.findall(r"`([^`]+)`", line):
                if re.match(r"python[0-9.]* ", span):
                    found += [DocCommand(f"{page.relative_to(ROOT)}:{number}", tuple(argv)) for argv in split_commands(span)[:1]]
    return found


def test_inline_python_commands_use_existing_flags() -> None:
    commands = inline_python_commands()
    checked, problems = 0, []
    for command in commands:
        found = script_of(command.argv)
        if found is None:
            continue
        script, args = found
        parser, passing = entry_parsers(script)
        known = {o for a in parser._actions for o in a.option_strings}
        if passing:
            known |= {o for a in build_student_parser()._actions for o in a.option_strings}
        unknown = [a for a in args if a.startswith("--") and a != "--" and a.split("=")[0] not in known | INLINE_PLACEHOLDER_FLAGS]
        checked += 1
        if unknown:
            problems.append(f"{command.where}: {' '.join(command.argv)}: no such flag {unknown}")
    assert not problems, "\n".join(problems)
    assert checked >= 30, checked


@pytest.mark.parametrize("text, expected", [
    ("OMP_NUM_THREADS=1 python train_student.py --seed 1   # a comment", [["python", "train_student.py", "--seed", "1"]]),
    ("python scripts/sweep.py ckd.yml --dry-run | wc -l", [["python", "scripts/sweep.py", "ckd.yml", "--dry-run"], ["wc", "-l"]]),
    ("a && b; c & d > out.log 2>&1", [["a"], ["b"], ["c"], ["d"]]),
    ('sbatch --wrap "x & y"', [["sbatch", "--wrap", "x & y"]]),
])
def test_commands_are_split_as_a_shell_splits_them(text: str, expected: list[list[str]]) -> None:
    assert split_commands(text) == expected


def test_a_renamed_flag_or_a_moved_script_fails_the_check() -> None:
    assert check_command(DocCommand("x", ("python", "train_student.py", "--model_s", "resnet8")))[1] is None
    assert "--lr" in (check_command(DocCommand("x", ("python", "train_student.py", "--lr", "0.1")))[1] or "")
    assert check_command(DocCommand("x", ("python", "scripts/sweep.py", "ckd.yml", "--", "--epochs", "5")))[1] is None
    assert check_command(DocCommand("x", ("python", "scripts/sweep.py", "ckd.yml", "--", "--epoch", "5")))[1]
    assert check_command(DocCommand("x", ("python", "benchmarks/bench.py", "--w_kd", "1", "--steps", "3")))[1] is None
    assert check_command(DocCommand("x", ("python", "benchmarks/bench.py", "--steps", "three")))[1]
    with pytest.raises(AssertionError, match="not a script of this checkout"):
        check_command(DocCommand("x", ("python", "scripts/bench.py")))
    assert check_command(DocCommand("x", ("sh", "scripts/fetch_pretrained_teachers.sh", "--only", "resnet56")))[1] is None
    assert check_command(DocCommand("x", ("sh", "scripts/fetch_pretrained_teachers.sh", "--onli", "resnet56")))[1]
    assert check_command(DocCommand("x", ("make", "bench")))[1] is None and check_command(DocCommand("x", ("make", "bnch")))[1]


# ---------------------------------------------------------------- facts the pages state, read off the code
def page_section(path: Path, heading: str) -> str:
    text = path.read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"{path.relative_to(ROOT)} has no '{heading}'"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(section: str) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and separator left out)."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|")]
    return rows[2:]


def test_layout_names_every_test_file() -> None:
    page = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    tests = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    assert len(tests) > 30
    missing = [name for name in tests if f"`{name}`" not in page]
    assert not missing, f"docs/layout.md's test table does not name {missing}"
    gone = sorted(set(re.findall(r"`(test_\w+\.py)`", page)) - set(tests))
    assert not gone, f"docs/layout.md names test files that do not exist: {gone}"


def test_flags_page_lists_the_run_folder_exclusions_of_the_code() -> None:
    from helper.run_folder import NON_IDENTITY_FLAGS, TEACHER_NON_IDENTITY_FLAGS

    section = page_section(ROOT / "docs" / "flags.md", "## Run-folder name")
    student, _, teacher = section.partition("`NON_IDENTITY_FLAGS`")
    listed = set(re.findall(r"`--(\w+)`", student))
    assert listed == set(NON_IDENTITY_FLAGS), f"docs/flags.md lists {sorted(listed)}; the code ignores {sorted(NON_IDENTITY_FLAGS)}"
    teacher_sentence = teacher.split("`TEACHER_NON_IDENTITY_FLAGS`")[0].rsplit(". ", 1)[-1]  # "A teacher folder also ..."
    extra = set(re.findall(r"`--(\w+)`", teacher_sentence))
    assert extra == set(TEACHER_NON_IDENTITY_FLAGS) - set(NON_IDENTITY_FLAGS)


# the sweep files of the CKD paper's CIFAR-100 comparison (README "Reproduce the paper"), and its Stanford Cars one
PAPER_GRIDS = ("ckd.yml", "kd.yml", "mixup.yml", "relational.yml", "white_box.yml", "white_box_ckd.yml")
PAPER_CARS = "cars.yml"


def sweep_grid(name: str) -> list[dict]:
    from scripts.sweep import expand_grid, load_sweep

    return expand_grid(load_sweep(ROOT / name)["parameters"], name)


def _numbers(cell: str) -> set[float]:
    return {float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)}


def test_sweeps_page_covers_every_sweep_file_as_the_files_say() -> None:
    rows = {row[0].strip("`"): row for row in table_rows(page_section(ROOT / "docs" / "sweeps.md", "## Sweep files"))}
    files = sorted(p.name for p in ROOT.glob("*.yml"))
    assert sorted(rows) == files, "docs/sweeps.md's table must list every sweep file of the repository root"
    paper_runs = 0
    for name in files:
        grid = sweep_grid(name)
        _, runs, paper, rates, sizes, _ = rows[name]
        assert int(runs) == len(grid), (name, runs, len(grid))
        assert paper == ("yes" if name in (*PAPER_GRIDS, PAPER_CARS) else "no"), name
        assert _numbers(rates) == {float(c["learning_rate"]) for c in grid}, name
        assert _numbers(sizes) == {float(c["subset_size"]) for c in grid}, name
        # "Every grid covers seeds {1, 2, 3} x students {resnet32, wrn_16_2, vgg8}"
        assert {c["seed"] for c in grid} == {1, 2, 3} and {c["model_s"] for c in grid} == {"resnet32", "wrn_16_2", "vgg8"}
        paper_runs += len(grid) if name in PAPER_GRIDS else 0
    page = (ROOT / "docs" / "sweeps.md").read_text(encoding="utf-8")
    assert f"**{paper_runs:,} runs**" in page and f"{sum(len(sweep_grid(n)) for n in files):,}" in page
    assert f"{paper_runs:,} runs in all" in (ROOT / "README.md").read_text(encoding="utf-8")


def _method_keys(config: dict) -> set[tuple[str, str]]:
    """The README method-table rows one sweep configuration runs, as (flag, value): ``None`` rows by --w_kd."""
    relational = config.get("relational")
    relational = None if relational in (None, "None") else relational
    distill = config.get("distill", "kd")
    keys = {("relational", relational)} if relational is not None else set()
    if distill != "kd":
        keys.add(("distill", distill))
    if relational is None and distill == "kd":
        keys.add(("relational", f"None --w_kd {int(float(config.get('w_kd', 0)) != 0)}"))
    return keys


def test_readme_method_table_marks_the_ckd_paper_grids() -> None:
    runs_in: dict[tuple[str, str], list[str]] = {}
    for name in PAPER_GRIDS:
        for config in sweep_grid(name):
            for key in _method_keys(config):
                runs_in.setdefault(key, [])
                if name not in runs_in[key]:
                    runs_in[key].append(name)
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    assert "| CKD paper grid |" in section
    checked = 0
    for line in section.splitlines():
        row = re.match(r"^\| `--(relational|distill) (\w+)`(?: \+ `--w_kd (\d)`)?", line)
        if not row:
            continue
        flag, value, w_kd = row.groups()
        key = (flag, f"None --w_kd {int(w_kd != '0')}" if value == "None" else value)
        cell = line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()
        expected = ", ".join(f"`{name}`" for name in runs_in.get(key, [])) or "—"
        assert cell == expected, f"README method table, {line[:40]}...: CKD paper grid '{cell}', the sweep files say '{expected}'"
        checked += 1
    assert checked >= 25 and checked >= len(runs_in)


def test_every_digits_teacher_recipe_is_the_demos() -> None:
    """README "From Python", docs/runs.md and docs/teachers.md train the digits teacher into the same folder as
    each other: with the demo's flags, or following them in order stops with 'holds a teacher trained with other
    flags'."""
    import ast

    from helper.config import TeacherConfig, parse_teacher_args
    from helper.run_folder import teacher_identity_config
    from scripts.demo import DIGITS_TEACHER_FLAGS

    expected = teacher_identity_config(parse_teacher_args(list(DIGITS_TEACHER_FLAGS)))
    found = 0
    for command in all_fenced_commands():
        script = script_of(command.argv)
        if script and script[0] == "train_teacher.py" and "digits" in script[1]:
            assert teacher_identity_config(parse_teacher_args(script[1])) == expected, command.where
            found += 1
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("\n## From Python\n", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    calls = [node for node in ast.walk(ast.parse(block)) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "TeacherConfig"]
    assert len(calls) == 1
    kwargs = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}
    assert teacher_identity_config(TeacherConfig(**kwargs)) == expected, "README From Python's teacher is not the demo's"
    assert found >= 2
