"""Sweep files and scripts/sweep.py: every value is accepted by train_student.py's parser, the grids
have the published sizes and W&B's order, bad files stop before launching, and restarts skip
finished runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from core.errors import UserError, run_main
from helper.options import build_student_parser
from scripts import sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "scripts" / "sweep.py"
EXPECTED_RUNS = {"ckd.yml": 432, "mixup.yml": 432, "relational.yml": 648, "white_box.yml": 405,
                 "white_box_ckd.yml": 405, "kd.yml": 432, "zoo.yml": 1080, "zoo_dkd.yml": 216, "cars.yml": 648,
                 "logit.yml": 486, "logit_ls.yml": 162, "logit_mlkd.yml": 81}
SWEEP_FILES = sorted(p.name for p in ROOT.glob("*.yml"))




def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SWEEP), *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=120)


def test_every_published_sweep_file_is_present() -> None:
    assert set(EXPECTED_RUNS) <= set(SWEEP_FILES)


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_file_is_a_valid_wandb_config(name: str) -> None:
    config = yaml.safe_load((ROOT / name).read_text())
    assert config["program"] == "train_student.py"
    assert config["method"] == "grid"
    assert config["metric"] == {"name": "best_val_acc", "goal": "maximize"}  # chosen on validation, never on test
    assert config["command"] == ["${env}", "${interpreter}", "${program}", "${args}"]
    assert "project" not in config and "entity" not in config  # left to `wandb sweep --project/--entity`
    for spec in config["parameters"].values():
        assert set(spec) in ({"value"}, {"values"}), spec


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_every_parameter_value_is_accepted_by_train_student(name: str) -> None:
    """The check that would have caught the published mixup3 failure: each flag exists, each value parses."""
    parameters = yaml.safe_load((ROOT / name).read_text())["parameters"]
    parser = build_student_parser()
    flags = {a.dest for a in parser._actions if a.option_strings}
    for flag, spec in parameters.items():
        assert flag in flags, f"{name}: {flag} is not a flag of train_student.py"
        for value in spec.get("values", [spec.get("value")]):
            parsed = getattr(parser.parse_args([f"--{flag}={value}"]), flag)  # the flag alone parses; the config of
            # every whole run (where combinations are checked) is built below
            expected = None if value in ("None", None) else value
            assert parsed == expected or str(parsed) == str(expected), (flag, value, parsed)
    # and every expanded run as a whole (the student parser + finalize, as sweep.py checks them)
    runs = sweep.build_runs(sweep.expand_grid(parameters, name), name)
    assert len({run.run_dir for run in runs}) == len(runs)  # every run writes its own folder


def test_dry_run_count_and_preflight_from_the_command_line(tmp_path: Path) -> None:
    """`scripts/sweep.py ckd.yml --gpus 0,0 --dry-run | wc -l` prints 432 (two slots on GPU 0 are accepted); the
    preflight goes to stderr: the three missing teachers in one sentence, exit 2."""
    result = _run("ckd.yml", "--gpus", "0,0", "--dry-run", "--save_dir", str(tmp_path / "save"))
    lines = result.stdout.splitlines()
    assert len(lines) == EXPECTED_RUNS["ckd.yml"]
    assert all(line.split()[1] == "train_student.py" for line in lines) and len(set(lines)) == len(lines)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: preflight: 3 teachers missing: resnet110 ({tmp_path}/save/models/resnet110_vanilla/ckpt_epoch_240.pth), "
        f"wrn_40_2 ({tmp_path}/save/models/wrn_40_2_vanilla/ckpt_epoch_240.pth), vgg13 "
        f"({tmp_path}/save/models/vgg13_vanilla/ckpt_epoch_240.pth); fetch them with "
        f"`sh scripts/fetch_pretrained_teachers.sh --only resnet110,vgg13,wrn_40_2 --save_dir {tmp_path}/save`"]
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_dry_run_counts(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same entry point in-process for every file: one line per run on stdout, the preflight (no teachers in a
    fresh save folder) on stderr."""
    monkeypatch.chdir(ROOT)
    assert sweep.main([name, "--dry-run", "--save_dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == EXPECTED_RUNS[name] and len(set(lines)) == len(lines)
    assert err and all(line.startswith("error: preflight: ") for line in err.splitlines())
    assert "teachers missing" in err or "teacher missing" in err


def test_kd_sweep_holds_ce_and_kd_baselines() -> None:
    configs = sweep.expand_grid(yaml.safe_load((ROOT / "kd.yml").read_text())["parameters"])
    assert {(c["relational"], c["distill"], c["w_kd"]) for c in configs} == {("None", "kd", 0), ("None", "kd", 1)}


def test_grid_order_follows_wandb() -> None:
    """W&B sorts the parameters by name and takes the product with the last name varying fastest;
    duplicate values (2 and 2.0) are dropped; constants are passed to every run."""
    parameters = {
        "seed": {"values": [1, 2]},
        "model_s": {"values": ["vgg8", "resnet32", "vgg8"]},
        "learning_rate": {"value": 0.05},
        "subset_size": {"values": [3000, 2000, 3000.0]},
    }
    configs = sweep.expand_grid(parameters)
    assert [list(c) for c in configs][0] == ["learning_rate", "model_s", "seed", "subset_size"]
    assert [(c["model_s"], c["seed"], c["subset_size"]) for c in configs] == [
        ("vgg8", 1, 3000), ("vgg8", 1, 2000), ("vgg8", 2, 3000), ("vgg8", 2, 2000),
        ("resnet32", 1, 3000), ("resnet32", 1, 2000), ("resnet32", 2, 3000), ("resnet32", 2, 2000),
    ]
    assert sweep.to_args(configs[0]) == ["--learning_rate=0.05", "--model_s=vgg8", "--seed=1", "--subset_size=3000"]
    # int_uniform and q_uniform become value lists as in W&B (q_uniform: max excluded, like numpy.arange)
    assert [c["seed"] for c in sweep.expand_grid({"seed": {"distribution": "int_uniform", "min": 1, "max": 4}})] == [1, 2, 3, 4]
    q = sweep.expand_grid({"w_kd": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25}})
    assert [c["w_kd"] for c in q] == [0.0, 0.25, 0.5, 0.75]


def test_dry_run_writes_wandb_style_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_save: Path) -> None:
    (tmp_path / "s.yml").write_text(textwrap.dedent("""\
        program: train_student.py
        method: grid
        parameters:
          dataset: {value: digits}
          model_t: {value: resnet8}
          relational: {value: None}
          w_kd: {values: [0, 1]}
          seed: {value: 3}
        """))
    python = tmp_path / "PY"  # --python must name an interpreter that exists, even for a dry run
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    program = tmp_path / "prog.py"  # and --program a script that exists
    program.touch()
    code = sweep.main([str(tmp_path / "s.yml"), "--dry-run", "--save_dir", str(digits_save), "--gpus", "0,1",
                       "--python", str(python), "--program", str(program)])
    assert code == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{python} {program} --dataset=digits --model_t=resnet8 --relational=None --seed=3 --w_kd={w} --save_dir={digits_save}"
        for w in (0, 1)]
    assert err == f"preflight: ok, {digits_save} is writable; 1 teacher loads (resnet8)\n"


def test_random_search_is_seeded_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parameters = {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.1},
        "seed": {"distribution": "int_uniform", "min": 1, "max": 5},
        "model_s": {"values": ["resnet32", "vgg8"]},
        "w_kd": {"distribution": "q_uniform", "min": 0, "max": 2, "q": 0.5},
    }
    first, again = sweep.sample_random(parameters, 20, seed=7), sweep.sample_random(parameters, 20, seed=7)
    assert first == again and len(first) == 20
    assert all(0.001 <= c["learning_rate"] <= 0.1 and 1 <= c["seed"] <= 5 and c["w_kd"] in (0, 0.5, 1, 1.5, 2) for c in first)
    (tmp_path / "r.yml").write_text(yaml.safe_dump({"program": "train_student.py", "method": "random", "parameters": parameters}))
    assert sweep.main([str(tmp_path / "r.yml"), "--dry-run", "--count", "5", "--save_dir", str(tmp_path / "save")]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 5 and "missing: " in err
    with pytest.raises(UserError, match="--count"):
        sweep.main([str(tmp_path / "r.yml"), "--dry-run"])


FAKE_PROGRAM = '''\
"""Stands in for train_student.py: parses the flags, logs the call, writes results.json."""
import json, os, sys
sys.path.insert(0, {root!r})
from helper.run_folder import student_run_dir
from helper.config import parse_student_args

opt = parse_student_args(sys.argv[1:])
with open({log!r}, "a") as log:
    data = os.path.isfile(os.path.join(opt.data_folder, "cifar-100-python", "train"))  # downloaded before this run?
    log.write(json.dumps({{"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "data": data}}) + "\\n")
marker = {marker!r}
if opt.seed == 2 and not os.path.exists(marker):  # fails once, as a crashed run would
    open(marker, "w").close()
    sys.exit(3)
run_dir = student_run_dir(opt)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "results.json").write_text(json.dumps({{"test_acc": 1.0, "config": opt.to_dict()}}))
print("results:", run_dir / "results.json")
'''


def _fake_program(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "calls.jsonl"
    program = tmp_path / "fake_train_student.py"
    program.write_text(FAKE_PROGRAM.format(root=str(ROOT), log=str(log), marker=str(tmp_path / "failed_once")))
    return program, log


# a digits student of the resnet8 teacher in conftest's digits_save (copied into each test's save folder): the
# preflight finds and loads it, and no data set has to be on disk
DIGITS = "  dataset: {value: digits}\n  model_s: {value: resnet8}\n  model_t: {value: resnet8}\n"


def _save_with_teacher(tmp_path: Path, teacher_save: Path) -> Path:
    save = tmp_path / "save"
    shutil.copytree(teacher_save, save)
    return save


def _calls(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_restart_skips_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_save: Path) -> None:
    program, log = _fake_program(tmp_path)
    save = _save_with_teacher(tmp_path, digits_save)
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n" + DIGITS +
                                    "  seed: {values: [1, 2]}\n  subset_size: {value: 400}\n  epochs: {value: 1}\n"
                                    "  learning_rate: {values: [0.05, '0.050']}\n")  # one rate written twice: one run
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(save)]
    assert sweep.main(args) == 1  # the seed-2 run failed; the sweep went on and reports it
    out = capsys.readouterr().out
    assert len(_calls(log)) == 2
    assert out.count("skipped, the same configuration as run") == 2
    assert "ran 1, skipped 2, failed 1" in out and "FAILED (exit code 3)" in out
    assert len(list((save / "student").glob("*/results.json"))) == 1

    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    calls = _calls(log)
    assert len(calls) == 3  # only the failed run was launched again
    assert "--seed=2" in calls[-1]["argv"]
    assert out.count("skipped, results.json already exists") == 2  # seed 1, at either spelling of the rate
    assert "ran 1, skipped 3, failed 0" in out

    assert sweep.main(args) == 0 and len(_calls(log)) == 3
    assert "ran 0, skipped 4, failed 0" in capsys.readouterr().out


def test_gpus_run_in_parallel_one_device_each(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_save: Path) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "failed_once").touch()  # no failures here
    save = _save_with_teacher(tmp_path, digits_save)
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 2]}\n" + DIGITS)
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(save), "--gpus", "0,1"]
    assert sweep.main(args) == 0, capsys.readouterr()
    calls = _calls(log)
    assert len(calls) == 2
    assert not any("--device" in arg for c in calls for arg in c["argv"])  # same run folders as a W&B agent's
    assert sorted(c["gpu"] for c in calls) == ["0", "1"]  # each run held its own GPU
    assert len(list((save / "sweep_logs").glob("*.log"))) == 2
    assert "ran 2, skipped 0, failed 0" in capsys.readouterr().out
    assert sweep.main(args) == 0 and len(_calls(log)) == 2  # a restart on the GPUs skips both


@pytest.mark.parametrize("parameters, words", [
    ("  relational: {values: [ckd, mixup4]}\n", "invalid choice: 'mixup4'"),
    ("  learning: {value: 0.1}\n", "'learning' is not a flag of train_student.py"),
    ("  model_s: {values: [resnet32, resnet9]}\n", "unknown architecture 'resnet9'"),
    ("  pos_and_neg: {values: [2, 1]}\n", "--pos_and_neg must be at least 2"),
    ("  relational: {value: crd}\n  distill: {values: [kd, hint]}\n", "only combines with --relational None or ckd_inter"),
])
def test_bad_sweep_file_stops_before_launching(tmp_path: Path, capsys: pytest.CaptureFixture[str], parameters: str,
                                               words: str) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "bad.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 2]}\n"
                                      + parameters)
    args = [str(tmp_path / "bad.yml"), "--program", str(program), "--save_dir", str(tmp_path / "save")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: sweep.main(args))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.yml") and words in lines[0], err
    assert not log.exists() and not (tmp_path / "save").exists()


def test_unsupported_method_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("method: bayes\nparameters:\n  seed: {values: [1]}\n")
    with pytest.raises(UserError, match="grid and random"):
        sweep.main([str(tmp_path / "b.yml")])
    with pytest.raises(UserError, match="does not exist"):
        sweep.main([str(tmp_path / "nope.yml")])
    (tmp_path / "g.yml").write_text("method: grid\nparameters:\n  learning_rate: {distribution: uniform, min: 0.01, max: 0.1}\n")
    with pytest.raises(UserError, match="cannot enumerate"):
        sweep.main([str(tmp_path / "g.yml"), "--dry-run"])


def test_every_sweep_metric_is_best_val_acc() -> None:
    for name in SWEEP_FILES:
        assert yaml.safe_load((ROOT / name).read_text())["metric"] == {"name": "best_val_acc", "goal": "maximize"}, name


def test_extra_flags_after_double_dash_go_to_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "save"
    assert sweep.main(["ckd.yml", "--dry-run", "--save_dir", str(save), "--", "--epochs", "5", "--wdb_project", "p"]) == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == EXPECTED_RUNS["ckd.yml"]
    assert all(line.endswith(f"--save_dir={save} --epochs 5 --wdb_project p") for line in lines), lines[0]
    with pytest.raises(UserError, match="the flags after --: unrecognized arguments: --epoch"):
        sweep.main(["ckd.yml", "--dry-run", "--", "--epoch", "5"])


def test_dry_run_marks_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "save"
    runs = sweep.build_runs(sweep.expand_grid(yaml.safe_load((ROOT / "kd.yml").read_text())["parameters"]), "kd.yml",
                            ["--save_dir", str(save)])
    runs[3].run_dir.mkdir(parents=True)
    (runs[3].run_dir / "results.json").write_text("{}")
    assert sweep.main(["kd.yml", "--dry-run", "--", "--save_dir", str(save)]) == 2  # no teachers in save
    lines = capsys.readouterr().out.splitlines()
    marked = [i for i, line in enumerate(lines) if "# finished" in line]
    assert marked == [3] and lines[3].endswith(f"  # finished: {runs[3].run_dir / 'results.json'}")


def test_logging_flags_do_not_change_the_run_folder() -> None:
    from helper.config import parse_student_args
    from helper.run_folder import student_run_dir

    base = ["--relational", "ckd", "--subset_size", "2000", "--seed", "1"]
    folder = student_run_dir(parse_student_args(base))
    for extra in (["--wdb_project", "p"], ["--wdb_entity", "e"], ["--_tags", "a,b"], ["--data_folder", "/elsewhere"],
                  ["--resume"]):
        assert student_run_dir(parse_student_args(base + extra)) == folder, extra
    assert student_run_dir(parse_student_args(base + ["--seed", "2"])) != folder  # what a run computes still does


def test_parallel_runs_share_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str], digits_save: Path) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "failed_once").touch()
    save = _save_with_teacher(tmp_path, digits_save)
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 3, 4]}\n" + DIGITS)
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(save), "--gpus", "0,0",
            "--", "--epochs", "7"]
    assert sweep.main(args) == 0, capsys.readouterr()
    calls = _calls(log)
    assert [c["gpu"] for c in calls] == ["0", "0", "0"] and all("7" in c["argv"] for c in calls)
    assert "ran 3, skipped 0, failed 0" in capsys.readouterr().out


def test_finished_configuration_reports_to_the_wandb_agent(tmp_path: Path) -> None:
    """An agent that sends a configuration that already finished still gets its stored results on the agent's run."""
    import json
    import os

    from helper.config import parse_student_args
    from helper.run_folder import student_run_dir
    from helper.wandb_offline import read_offline_run

    argv = ["--relational=ckd", "--model_s=resnet8", "--dataset=digits", "--subset_size=400", "--seed=2",
            "--learning_rate=0.05", f"--save_dir={tmp_path / 'save'}"]
    opt = parse_student_args(argv)
    run_dir = student_run_dir(opt)
    run_dir.mkdir(parents=True)
    stored = {"test_acc": 91.5, "best_val_acc": 93.0, "teacher_calls": 320, "n_train": 320, "n_val": 80,
              "config": opt.to_dict()}
    (run_dir / "results.json").write_text(json.dumps(stored))
    before = sorted(run_dir.iterdir())
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SWEEP_ID="sweep123", WANDB_RUN_ID="agentrun42", WANDB_SILENT="true",
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "train_student.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "already finished" in proc.stdout and "reported the stored results" in proc.stdout
    offline = list((run_dir / "wandb").glob("offline-run-*-agentrun42"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    logged = read_offline_run(offline[0])
    assert logged["summary"]["best_val_acc"] == 93.0 and logged["summary"]["test_acc"] == 91.5
    assert logged["name"] == "ckd seed2"
    assert logged["group"].startswith("ckd resnet8<-resnet14 digits n400 lr0.05 ")
    assert sorted(p for p in run_dir.iterdir() if p.name != "wandb") == before  # no TensorBoard file, nothing rewritten
    # without an agent, a rerun of a finished configuration only says so
    env.pop("WANDB_SWEEP_ID")
    env.pop("WANDB_RUN_ID")
    proc = subprocess.run([sys.executable, "train_student.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "reported" not in proc.stdout
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1


def test_cars_sweep_fits_the_stanford_cars_training_set() -> None:
    """cars.yml trains on Stanford Cars with subsets its 8,144 training images can hold, students with published teachers."""
    from helper.options import DEFAULT_TEACHER

    parameters = yaml.safe_load((ROOT / "cars.yml").read_text())["parameters"]
    assert parameters["dataset"] == {"value": "stanfordcars"}
    assert max(parameters["subset_size"]["values"]) <= 8144
    assert {str(v) for v in parameters["relational"]["values"]} == {"None", "mixup", "ckd"}
    assert all(student in DEFAULT_TEACHER for student in parameters["model_s"]["values"])


# ---------------------------------------------------------------- every bad sweep file (issue 28, class 7)

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(7))

# (what the file holds below `program:` and `method:` -- or the whole file when it starts with '!' --, words of the one
# sentence). Every distribution of W&B's schema with bad parameters, then the file's other members.
BAD_SWEEP_FILES = [
    # constant / categorical / categorical_w_probabilities
    ("seed: {distribution: constant}", "(constant) needs value"),
    ("seed: {value: [1, 2]}", "a train_student.py flag takes one number or word"),
    ("seed: {values: []}", "zero runs"),
    ("seed: {values: 3}", "non-empty list under 'values'"),
    ("seed: {values: [1, {a: 2}]}", "a dict"),
    ("seed: {values: [1, 2], probabilities: [1.0]}", "a list of 2 probabilities"),
    ("seed: {values: [1, 2], probabilities: [1.5, -0.5]}", "each must be a number of 0 or more"),
    ("seed: {values: [1, 2], probabilities: [0.2, 0.2]}", "sum to 0.4, not 1"),
    ("seed: {distribution: categorical, values: [1, 2], probabilities: [0.5, 0.5]}", "does not take probabilities"),
    ("seed: {distribution: categorical_w_probabilities, values: [1, 2], probabilities: [0.5, 0.5]}",
     "probabilities, which grid search does not use"),
    # int_uniform
    ("seed: {distribution: int_uniform, min: 1.5, max: 4}", "whole numbers as min and max"),
    ("seed: {distribution: int_uniform, min: 5, max: 1}", "min 5 not below max 1"),
    ("seed: {distribution: int_uniform, min: 0, max: 1000000000000}", "grid of 1,000,000,000,001 runs"),
    ("seed: {distribution: int_uniform, min: 0}", "(int_uniform) needs max"),
    ("seed: {min: 0, max: 999}\n  trial: {min: 1, max: 999}", "grid of 999,000 runs (1,000 seed x 999 trial)"),
    # uniform and q_uniform
    ("w_kd: {distribution: uniform, min: .nan, max: 1}", "needs a finite number as 'min'"),
    ("w_kd: {distribution: uniform, min: 0, max: .inf}", "needs a finite number as 'max'"),
    ("w_kd: {distribution: uniform, min: 1, max: 1}", "not below max"),
    ("w_kd: {distribution: uniform, min: 0, max: 1, q: 0.1}", "(uniform) does not take q"),
    ("w_kd: {distribution: q_uniform, min: 0, max: 1, q: 0}", "q above 0, got 0"),
    ("w_kd: {distribution: q_uniform, min: 0, max: 1, q: -0.5}", "q above 0, got -0.5"),
    ("w_kd: {distribution: q_uniform, min: 0, max: 1, q: 1.0e-9}", "grid of 1,000,000,000 runs"),
    ("w_kd: {distribution: q_uniform, min: -1.0e+308, max: 1.0e+308, q: 1.0e-300}", "more values than a number can count"),
    ("w_kd: {distribution: q_uniform, min: 0, max: 1, q: yes}", "needs a finite number as 'q'"),
    # the log, inverse-log, normal and beta families (random search)
    ("!method: random\nparameters:\n  w_kd: {distribution: log_uniform, min: 0, max: 1000}", "exp(1000) is too large"),
    ("!method: random\nparameters:\n  w_kd: {distribution: q_log_uniform, min: 0, max: 1, q: 0}", "q above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: log_uniform_values, min: 0, max: 1}", "needs min above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: q_log_uniform_values, min: -1, max: 1}", "needs min above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: inv_log_uniform, min: -1000, max: 1}", "exp(1000) is too"),
    ("!method: random\nparameters:\n  w_kd: {distribution: inv_log_uniform_values, min: 0, max: 1}", "needs min above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: normal, mu: 0, sigma: -1}", "sigma of 0 or more"),
    ("!method: random\nparameters:\n  w_kd: {distribution: normal, mu: .nan}", "finite number as 'mu'"),
    ("!method: random\nparameters:\n  w_kd: {distribution: normal, min: 0, max: 1}", "(normal) does not take min, max"),
    ("!method: random\nparameters:\n  w_kd: {distribution: q_normal, q: 0}", "q above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: log_normal, mu: 100000, sigma: 1}", "drew a value no number"),
    ("!method: random\nparameters:\n  w_kd: {distribution: q_log_normal, sigma: -2}", "sigma of 0 or more"),
    ("!method: random\nparameters:\n  w_kd: {distribution: beta, a: 0}", "shape 'a' above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: q_beta, b: -1, q: 0.1}", "shape 'b' above 0"),
    ("!method: random\nparameters:\n  w_kd: {distribution: gaussian, mu: 0}", "unknown distribution 'gaussian'"),
    ("w_kd: {distribution: normal}", "grid search cannot enumerate"),
    ("seed: {mu: 1}", "neither value, values nor min/max"),
    ("seed: {distribution: [normal], mu: 1}", "unknown distribution '['normal']'"),
    ("seed: {values: [1, !!set {2}]}", "a set"),
    ("seed: {value: 2020-13-45}", "not valid YAML (month must be in 1..12)"),
    ("seed: {parameters: {a: {value: 1}}}", "is nested"),
    ("1: {value: 2}", "parameter name 1 is not a flag name"),
    ("'se ed': {value: 2}", "parameter name 'se ed' is not a flag name"),
    # YAML: duplicate keys, aliases, documents, nesting
    ("seed: {value: 1}\n  seed: {value: 2}", "line 5: key 'seed' appears twice in one mapping (first on line 4)"),
    ("!program: train_student.py\nmethod: grid\nmethod: random\nparameters:\n  seed: {value: 1}", "key 'method' appears twice"),
    ("!" + BOMB + "program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: *h}\n",
     "expands to 234,567,917 YAML nodes through its aliases"),
    ("!program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: &r [1, *r]}", "endless YAML nodes"),
    ("!program: train_student.py\nmethod: grid\nparameters:\n  seed: {value: 1}\n---\nmethod: grid", "not valid YAML"),
    ("!program: train_student.py\nmethod: grid\nparameters:\n  seed: {value: " + "[" * 5000 + "]" * 5000 + "}",
     "nested too deeply"),
    ("!program: train_student.py\nmethod: grid\nparameters: {seed: {value: 1}", "not valid YAML"),
    # the other keys of a sweep file
    ("!program: train_student.py\nmetod: grid\nmethod: grid\nparameters:\n  seed: {value: 1}", "has the key metod"),
    ("!program: train_student.py\nmethod: bayes\nparameters:\n  seed: {value: 1}", "support only grid and random"),
    ("!program: train_student.py\nmethod: grid\nparameters: {}", "no 'parameters' mapping"),
    ("!program: train_student.py\nmethod: grid\nmetric: best_val_acc\nparameters:\n  seed: {value: 1}", "'metric' must be a mapping"),
    ("!program: train_student.py\nmethod: grid\nmetric: {name: a, goal: max}\nparameters:\n  seed: {value: 1}", "goal 'max'"),
    ("!program: train_student.py\nmethod: grid\nmetric: {name: a, target: .inf}\nparameters:\n  seed: {value: 1}", "target inf"),
    ("!program: train_student.py\nmethod: grid\nrun_cap: 0\nparameters:\n  seed: {value: 1}", "'run_cap' must be a whole number"),
    ("!program: train_student.py\nmethod: grid\ncommand: python train.py\nparameters:\n  seed: {value: 1}",
     "'command' must be a list of strings"),
    ("!program: train_student.py\nmethod: grid\nearly_terminate: {type: hyperband, eta: 1}\nparameters:\n  seed: {value: 1}",
     "needs min_iter, or max_iter and s"),
    ("!program: train_student.py\nmethod: grid\nearly_terminate: {type: median}\nparameters:\n  seed: {value: 1}",
     "type: hyperband"),
    ("!program: train_student.py\nmethod: grid\nkind: job\nparameters:\n  seed: {value: 1}", "'kind' can only be sweep"),
    ("!program: train_student.py\nmethod: grid\nname: [a]\nparameters:\n  seed: {value: 1}", "'name' must be a string"),
    ("!program: nope_train.py\nmethod: grid\nparameters:\n  seed: {value: 1}", "program nope_train.py does not exist"),
    ("!program: scripts\nmethod: grid\nparameters:\n  seed: {value: 1}", "is a directory, not a script"),
    ("!method: grid\nparameters:\n  seed: {value: 1}", "has no 'program'"),
    ("!method: random\nprogram: train_student.py\nparameters:\n  seed: {value: 1}", "pass --count N"),
]


@pytest.mark.parametrize("body, words", BAD_SWEEP_FILES, ids=[f"{i}" for i in range(len(BAD_SWEEP_FILES))])
def test_every_bad_sweep_file_is_one_sentence_before_anything_expands(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch, body: str,
                                                                       words: str) -> None:
    """Issue 28 class 7: each member is refused with one sentence, exit 2, in --dry-run too, before a run is listed."""
    text = body[1:] if body.startswith("!") else f"program: train_student.py\nmethod: grid\nparameters:\n  {body}\n"
    (tmp_path / "bad.yml").write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: sweep.main(["bad.yml", "--dry-run", "--count", "3"] if "method: random" in text and
                                    "pass --count" not in words else ["bad.yml", "--dry-run"]))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yml"]  # nothing written


def test_sweep_file_that_is_not_a_small_regular_file(tmp_path: Path) -> None:
    """A FIFO (read without end) and a file of megabytes (parsed whole) are refused before they are read."""
    import os

    os.mkfifo(tmp_path / "fifo.yml")
    with pytest.raises(UserError, match="fifo.yml is not a regular file"):
        sweep.main([str(tmp_path / "fifo.yml"), "--dry-run"])
    ones = ", ".join(["1"] * 400_000)
    (tmp_path / "big.yml").write_text(f"program: train_student.py\nmethod: grid\nparameters:\n  seed: {{values: [{ones}]}}\n")
    with pytest.raises(UserError, match="holds 1,200,070 bytes, more than the 1,048,576 a sweep file may"):
        sweep.main([str(tmp_path / "big.yml"), "--dry-run"])


def test_large_random_count_and_run_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--count is bounded like a grid (no list of 10^12 draws), and W&B's run_cap bounds a local sweep as --count does."""
    (tmp_path / "r.yml").write_text("program: train_student.py\nmethod: random\nrun_cap: 4\nparameters:\n"
                                    "  seed: {distribution: int_uniform, min: 1, max: 9}\n")
    with pytest.raises(UserError, match="1,000,000,000,000 runs \\(--count or run_cap\\) is more than the 100,000"):
        sweep.main([str(tmp_path / "r.yml"), "--dry-run", "--count", str(10**12)])
    assert sweep.main([str(tmp_path / "r.yml"), "--dry-run", "--save_dir", str(tmp_path / "save")]) == 2  # no teacher
    assert len(capsys.readouterr().out.splitlines()) == 4


# ---------------------------------------------------------------- preflight (issue 27, deliverable 3)


def _random_teacher(save: Path, name: str) -> None:
    from helper.options import teacher_checkpoint_path
    from models import model_dict

    path = teacher_checkpoint_path(save, "cifar100", name)
    path.parent.mkdir(parents=True)
    torch.save({"model": model_dict[name](num_classes=100).state_dict()}, path)


def test_preflight_names_a_missing_teacher_and_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`scripts/sweep.py ckd.yml` with wrn_40_2 missing (resnet110 and vgg13 present): one sentence names it, exit 2,
    no run started, nothing written; a teacher that does not load is its own sentence."""
    program, log = _fake_program(tmp_path)
    save = tmp_path / "save"
    _random_teacher(save, "resnet110")
    _random_teacher(save, "vgg13")
    before = sorted(save.rglob("*"))
    args = [str(ROOT / "ckd.yml"), "--program", str(program), "--save_dir", str(save), "--gpus", "0,0"]
    assert sweep.main(args) == 2
    out, err = capsys.readouterr()
    wrn = save / "models" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth"
    assert out == "" and err.splitlines() == [
        f"error: preflight: 1 teacher missing: wrn_40_2 ({wrn}); fetch it with "
        f"`sh scripts/fetch_pretrained_teachers.sh --only wrn_40_2 --save_dir {save}`",
        "error: preflight failed, so no run was started; fix the above and run the same command again"]
    assert not log.exists() and sorted(save.rglob("*")) == before  # no run, no log folder, no probe file

    (save / "models" / "vgg13_vanilla" / "ckpt_epoch_240.pth").write_text("not a checkpoint")
    assert sweep.main([*args, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == EXPECTED_RUNS["ckd.yml"]
    problems = err.splitlines()
    assert len(problems) == 2 and problems[0].startswith("error: preflight: the vgg13 teacher does not load: ")
    assert "is not a PyTorch checkpoint" in problems[0] and "1 teacher missing: wrn_40_2" in problems[1]


def test_preflight_downloads_cifar100_once_before_parallel_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch, save_dir: Path) -> None:
    """CIFAR-100 missing and `--gpus 0,0`: the sweep downloads it once (the loopback server counts the requests of one
    download), then both runs start and find it; a dry run only says that it would download it."""
    from tests.cifar_fixture import make_fake_cifar100_archive
    from tests.http_fixture import serving

    log = tmp_path / "calls.jsonl"
    program = tmp_path / "light_train_student.py"  # imports nothing heavy: logs whether its data was there at its start
    program.write_text("import json, os, sys\n"
                       "folder = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--data_folder='))\n"
                       "data = os.path.isfile(os.path.join(folder, 'cifar-100-python', 'train'))\n"
                       f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], 'data': data}}) + '\\n')\n")
    archive, md5 = make_fake_cifar100_archive(tmp_path / "served", n_train=120, n_test=100, seed=5)
    data = tmp_path / "data"
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 2]}\n"
                                    "  model_s: {value: resnet8}\n  model_t: {value: resnet8}\n"
                                    f"  data_folder: {{value: {data}}}\n")
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(save_dir), "--gpus", "0,0"]
    with serving({"/c.tar.gz": archive.read_bytes()}) as server:
        monkeypatch.setenv("CIFAR100_URL", server.url("/c.tar.gz"))
        monkeypatch.setenv("CIFAR100_MD5", md5)
        assert sweep.main([*args, "--dry-run"]) == 0
        out, err = capsys.readouterr()
        assert len(out.splitlines()) == 2 and f"CIFAR-100 is not in {data}; the sweep downloads it there once" in err
        assert server.requests == [] and not data.exists()

        from dataset.cifar100 import download_cifar100

        download_cifar100(tmp_path / "alone")  # the requests of one download (torchvision's downloader makes several)
        one_download = len(server.requests)
        server.requests.clear()
        assert sweep.main(args) == 0
        assert len(server.requests) == one_download
    out = capsys.readouterr().out
    assert out.index(f"preflight: downloading CIFAR-100 into {data} once") < out.index("[1/2] gpu 0: running")
    calls = _calls(log)
    assert len(calls) == 2 and all(call["data"] for call in calls)  # both runs started with the data on disk
    assert "ran 2, skipped 0, failed 0" in out
