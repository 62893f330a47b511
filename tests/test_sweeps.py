"""Sweep files and scripts/sweep.py: every value is accepted by train_student.py's parser, the grids
have the published sizes and W&B's order, bad files stop before launching, and restarts skip
finished runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
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


def test_dry_run_count_from_the_command_line() -> None:
    """`scripts/sweep.py ckd.yml --dry-run | wc -l` prints 432."""
    result = _run("ckd.yml", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == EXPECTED_RUNS["ckd.yml"]
    assert all(line.split()[1] == "train_student.py" for line in lines) and len(set(lines)) == len(lines)


@pytest.mark.parametrize("name", sorted(EXPECTED_RUNS))
def test_dry_run_counts(name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same entry point in-process for every file (one line per run, nothing else)."""
    monkeypatch.chdir(ROOT)
    assert sweep.main([name, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == EXPECTED_RUNS[name] and len(set(lines)) == len(lines) and err == ""


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


def test_dry_run_writes_wandb_style_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "s.yml").write_text(textwrap.dedent("""\
        program: train_student.py
        method: grid
        parameters:
          relational: {value: None}
          w_kd: {values: [0, 1]}
          seed: {value: 3}
        """))
    python = tmp_path / "PY"  # --python must name an interpreter that exists, even for a dry run
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    code = sweep.main([str(tmp_path / "s.yml"), "--dry-run", "--save_dir", str(tmp_path / "save"), "--gpus", "0,1",
                       "--python", str(python), "--program", "prog.py"])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{python} prog.py --relational=None --seed=3 --w_kd=0 --save_dir={tmp_path / 'save'}",
        f"{python} prog.py --relational=None --seed=3 --w_kd=1 --save_dir={tmp_path / 'save'}",
    ]


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
    assert sweep.main([str(tmp_path / "r.yml"), "--dry-run", "--count", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
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
    log.write(json.dumps({{"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")
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


def _calls(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_restart_skips_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n"
                                    "  seed: {values: [1, 2]}\n  subset_size: {value: 2000}\n  epochs: {value: 1}\n"
                                    "  learning_rate: {values: [0.05, '0.050']}\n")  # one rate written twice: one run
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(tmp_path / "save")]
    assert sweep.main(args) == 1  # the seed-2 run failed; the sweep went on and reports it
    out = capsys.readouterr().out
    assert len(_calls(log)) == 2
    assert out.count("skipped, the same configuration as run") == 2
    assert "ran 1, skipped 2, failed 1" in out and "FAILED (exit code 3)" in out
    assert len(list((tmp_path / "save" / "student").glob("*/results.json"))) == 1

    assert sweep.main(args) == 0
    out = capsys.readouterr().out
    calls = _calls(log)
    assert len(calls) == 3  # only the failed run was launched again
    assert "--seed=2" in calls[-1]["argv"]
    assert out.count("skipped, results.json already exists") == 2  # seed 1, at either spelling of the rate
    assert "ran 1, skipped 3, failed 0" in out

    assert sweep.main(args) == 0 and len(_calls(log)) == 3
    assert "ran 0, skipped 4, failed 0" in capsys.readouterr().out


def test_gpus_run_in_parallel_one_device_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "failed_once").touch()  # no failures here
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 2]}\n")
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(tmp_path / "save"), "--gpus", "0,1"]
    assert sweep.main(args) == 0, capsys.readouterr()
    calls = _calls(log)
    assert len(calls) == 2
    assert not any("--device" in arg for c in calls for arg in c["argv"])  # same run folders as a W&B agent's
    assert sorted(c["gpu"] for c in calls) == ["0", "1"]  # each run held its own GPU
    assert len(list((tmp_path / "save" / "sweep_logs").glob("*.log"))) == 2
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


def test_dry_run_with_several_runs_per_gpu() -> None:
    """`scripts/sweep.py ckd.yml --gpus 0,0 --dry-run`: two slots on GPU 0 are accepted."""
    result = _run("ckd.yml", "--gpus", "0,0", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == EXPECTED_RUNS["ckd.yml"]


def test_extra_flags_after_double_dash_go_to_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "save"
    assert sweep.main(["ckd.yml", "--dry-run", "--save_dir", str(save), "--", "--epochs", "5", "--wdb_project", "p"]) == 0
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
    assert sweep.main(["kd.yml", "--dry-run", "--", "--save_dir", str(save)]) == 0
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


def test_parallel_runs_share_a_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    program, log = _fake_program(tmp_path)
    (tmp_path / "failed_once").touch()
    (tmp_path / "s.yml").write_text("program: train_student.py\nmethod: grid\nparameters:\n  seed: {values: [1, 3, 4]}\n")
    args = [str(tmp_path / "s.yml"), "--program", str(program), "--save_dir", str(tmp_path / "save"), "--gpus", "0,0",
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
