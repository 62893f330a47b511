"""The method table (helper/method_table.py) is the one list of methods: flags, help, labels, combinations and the
README read it; every method added with it trains end to end on digits with n_train x views teacher calls; a method
added by a table row alone is accepted and trained."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from torch import Tensor, nn

import train_student
from core.errors import UserError
from distiller_zoo import FeatureTerm, TermContext
from helper import method_table
from helper.config import parse_student_args
from helper.method_table import LOGIT, LOGIT_PAIR, WHITE_BOX, MethodRow
from helper.options import build_student_parser, teacher_checkpoint_path
from helper.student_trainer import StudentRun
from tests.conftest import ROOT

# the methods wired with the table (issue #14), with their published default weights
NEW_METHODS = {"attention": 1000.0, "similarity": 3000.0, "pkt": 30000.0, "abound": 1.0, "factor": 200.0, "fsp": 50.0,
               "nst": 50.0, "kdsvd": 1.0, "dkd": 1.0}
VIEWS = 2


def digits_args(save_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "80", "--epochs", "1",
            "--batch_size", "32", "--init_epochs", "1", "--teacher_views", str(VIEWS), "--device", "cpu",
            "--path_t", str(teacher_checkpoint_path(save_dir, "digits", "resnet8")), "--save_dir", str(save_dir), *extra]


def results_of(capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    out = capsys.readouterr().out
    path = Path(out.strip().splitlines()[-1].removeprefix("results: "))
    return json.loads(path.read_text()), out


def flags_of(name: str) -> list[str]:
    row = method_table.find("relational", name) if name in method_table.choices_of("relational") else None
    return [f"--relational={name}"] if row is not None else ["--relational=None", "--distill", name]


# ------------------------------------------------------------------------------------------------ the table


def test_rows_are_well_formed_and_their_builders_resolve() -> None:
    names = [r.name for r in method_table.METHODS]
    assert len(names) == len(set(names))
    for row in method_table.METHODS:
        assert row.kind in method_table.KINDS and row.sampler in method_table.SAMPLERS and row.summary
        built = method_table.resolve(row.builder)
        assert callable(built)
        if row.kind == WHITE_BOX:
            assert issubclass(built, FeatureTerm)
            assert bool(row.init_stage) == (built.init_modules is not FeatureTerm.init_modules)
        else:
            assert not row.init_stage and not row.not_on_differences
    for name, weight in NEW_METHODS.items():
        row = method_table.find("distill", name) if name != "dkd" else method_table.find("relational", name)
        assert row is not None and row.weight == weight
    dkd = method_table.find("relational", "dkd")
    assert dkd.kind == LOGIT and dkd.needs_labels and dkd.needs_epoch
    assert {r.name for r in method_table.rows(kind=WHITE_BOX) if r.init_stage} == {"abound", "factor", "fsp"}


def test_the_table_imports_no_torch() -> None:
    code = "import sys, helper.method_table, helper.options; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_flag_choices_and_help_come_from_the_table() -> None:
    actions = {a.dest: a for a in build_student_parser()._actions}
    assert tuple(actions["relational"].choices) == (None, *(r.name for r in method_table.rows(flag="relational")))
    assert tuple(actions["distill"].choices) == ("kd", *(r.name for r in method_table.rows(kind=WHITE_BOX)))
    for row in method_table.METHODS:
        if row.kind == LOGIT_PAIR:  # switched on by its weight flag
            assert row.flag in actions and row.name not in method_table.choices_of("relational")
        else:
            assert row.name in actions[row.flag].help


def test_readme_methods_table_lists_exactly_the_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `--(relational|distill) (\w+)`", section, flags=re.MULTILINE))
    expected = {(r.flag, r.name) for r in method_table.METHODS if r.kind != LOGIT_PAIR} | {("relational", "None")}
    assert listed == expected


def test_combinations_follow_the_table() -> None:
    pairs = method_table.combinations()
    assert len(pairs) == len(set(pairs))
    assert ("ckd_inter", "attention") in pairs and ("ckd_inter", "abound") not in pairs and ("dkd", "kd") in pairs
    for relational, distill in pairs:
        opt = parse_student_args(["--relational", str(relational), "--distill", distill])
        assert opt.method == method_table.method_spec(opt.relational, opt.distill)


@pytest.mark.parametrize("distill", ["abound", "factor"])
def test_a_method_that_cannot_use_group_differences_is_rejected_in_one_sentence(distill: str) -> None:
    with pytest.raises(UserError) as err:  # refused when the configuration is built, before any work
        parse_student_args(["--relational", "ckd_inter", "--distill", distill])
    assert str(err.value) == (f"--distill {distill} cannot be combined with --relational ckd_inter: "
                              f"{method_table.find('distill', distill).not_on_differences}")


def test_fsp_and_kdsvd_reject_unmatched_channels_before_the_teacher_is_read(tmp_path: Path) -> None:
    from helper.methods import check_white_box_early

    for distill in ("fsp", "kdsvd"):
        opt = parse_student_args(["--model_s", "resnet8", "--model_t", "wrn_16_2", "--distill", distill,
                                  "--save_dir", str(tmp_path / "no_teacher_there")])
        with pytest.raises(UserError, match=f"--distill {distill} needs equal student and teacher channel counts"):
            check_white_box_early(opt, 10, (3, 32, 32))


def test_no_method_is_special_cased_by_its_loss_type() -> None:
    """Every term is called through the one signature of its kind: no ``isinstance(..., SomeLoss)`` in helper/ or
    scripts/."""
    found = [f"{path.relative_to(ROOT)}:{number}"
             for folder in ("helper", "scripts") for path in sorted((ROOT / folder).rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"isinstance\(.*Loss", line)]
    assert found == []


def test_teacher_layers_are_stated_by_each_term() -> None:
    from helper.methods import teacher_feature_layers, teacher_needs_preact

    base = parse_student_args([])
    expected = {"hint": (2,), "vid": (1, 2, 3), "correlation": (4,), "attention": (1, 2, 3), "similarity": (3,),
                "pkt": (4,), "abound": (1, 2, 3), "factor": (3,), "fsp": (0, 1, 2, 3), "nst": (1, 2, 3),
                "kdsvd": (1, 2, 3), "kd": ()}
    for distill, layers in expected.items():
        opt = dataclasses.replace(base, distill=distill)
        assert teacher_feature_layers(opt, 5) == layers, distill
        assert teacher_needs_preact(opt) == (distill == "abound")


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("name", list(NEW_METHODS))
def test_new_method_trains_on_digits_with_one_teacher_call_per_image_and_view(name: str, digits_save: Path,
                                                                              tmp_path: Path, capsys) -> None:
    train_student.main(digits_args(digits_save, *flags_of(name), "--save_dir", str(tmp_path)))
    results, out = results_of(capsys)
    assert results["teacher_calls"] == results["n_train"] * VIEWS == 64 * VIEWS
    assert results["pseudo_epochs"] == 1 and 0.0 <= results["test_acc"] <= 100.0
    has_init = name in ("abound", "factor", "fsp")
    assert ("init epoch   1/1" in out) == has_init
    assert "teacher calls for 64 training images" in out  # the cache was built once, before any training


def test_resume_after_the_init_stage_matches_an_uninterrupted_run(digits_save: Path, tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    args = digits_args(digits_save, "--distill", "factor", "--epochs", "2", "--init_epochs", "2")
    train_student.main([*args, "--save_dir", str(tmp_path / "whole")])
    whole, _ = results_of(capsys)

    original = StudentRun.begin_epoch

    def stop_at_once(self: StudentRun) -> None:  # as if SIGINT arrived right after the init stage (honoured after a step)
        original(self)
        self.stop.signum = signal.SIGINT

    monkeypatch.setattr(StudentRun, "begin_epoch", stop_at_once)
    with pytest.raises(SystemExit):
        train_student.main([*args, "--save_dir", str(tmp_path / "split")])
    first = capsys.readouterr().out
    assert "init epoch   2/2" in first and "stopped: saved" in first
    monkeypatch.setattr(StudentRun, "begin_epoch", original)
    train_student.main([*args, "--save_dir", str(tmp_path / "split")])
    resumed, out = results_of(capsys)
    assert "resumed at pseudo-epoch 0" in out and "init epoch" not in out and "reusing the teacher cache" in out
    for key in ("test_acc", "test_loss", "best_val_acc", "best_val_loss", "teacher_calls"):
        assert resumed[key] == whole[key], key


class L1Term(nn.Module):
    """A throw-away logit term: mean |softmax(s) - softmax(t)|, counting its calls and what it was given."""

    ARGS = ("kd_T",)
    calls = 0
    built_with: list[tuple[object, dict]] = []

    def __init__(self, ctx: object, **args: object) -> None:
        super().__init__()
        type(self).built_with.append((ctx, args))

    def forward(self, logits_s: Tensor, logits_t: Tensor, labels: Tensor | None, batch: dict) -> Tensor:
        assert labels is None and "epoch" not in batch and "idx" in batch  # its row asks for neither
        type(self).calls += 1
        return (logits_s.softmax(1) - logits_t.softmax(1)).abs().mean()


def test_a_logit_method_added_by_one_table_row_is_accepted_and_trained(digits_save: Path, tmp_path: Path, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    row = MethodRow(name="l1", kind=LOGIT, weight=3.0, sampler="plain", builder=f"{__name__}:L1Term",
                    summary="L1 between softmaxes (test only)")
    monkeypatch.setattr(method_table, "METHODS", (*method_table.METHODS, row))
    assert "l1" in build_student_parser().parse_args(["--relational", "l1"]).relational
    L1Term.calls, L1Term.built_with = 0, []
    train_student.main(digits_args(digits_save, "--relational", "l1", "--kd_T", "3", "--save_dir", str(tmp_path)))
    results, out = results_of(capsys)
    assert results["config"]["relational"] == "l1" and results["teacher_calls"] == 64 * VIEWS
    assert L1Term.calls == 2  # ceil(64 / 32) steps of one pseudo-epoch
    assert method_table.method_label(results["config"]) == "l1"
    [(ctx, args)] = L1Term.built_with
    assert args == {"kd_T": 3.0}  # exactly its ARGS, by name
    assert isinstance(ctx, TermContext) and not hasattr(ctx, "opt") and ctx.num_classes == 10 and ctx.n_items == 64 * VIEWS


class ArgsTerm(FeatureTerm):
    """A throw-away white-box term that records what each of its hooks was given: MSE of the last feature map."""

    ARGS = ("hint_layer", "feat_dim")
    seen: list[tuple[str, dict]] = []

    @classmethod
    def layers(cls, n_feats: int, **args: object) -> list[int]:
        cls.seen.append(("layers", args))
        return [n_feats - 1]

    @classmethod
    def check(cls, s_shapes: list, t_shapes: list, **args: object) -> None:
        cls.seen.append(("check", args))

    def __init__(self, ctx: TermContext, signed: bool = False, **args: object) -> None:
        type(self).seen.append(("init", args))
        assert isinstance(ctx, TermContext) and not hasattr(ctx, "opt")
        super().__init__(ctx, signed, **args)

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        return (feats_s[0] - feats_t[0]).pow(2).mean()


def test_a_term_receives_exactly_the_run_settings_it_declares(digits_save: Path, tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    row = MethodRow(name="argsterm", kind=WHITE_BOX, weight=2.0, sampler="plain", builder=f"{__name__}:ArgsTerm",
                    summary="MSE of the last feature (test only)")
    monkeypatch.setattr(method_table, "METHODS", (*method_table.METHODS, row))
    ArgsTerm.seen = []
    train_student.main(digits_args(digits_save, "--distill", "argsterm", "--hint_layer", "1", "--feat_dim", "16",
                                   "--save_dir", str(tmp_path)))
    results, _ = results_of(capsys)
    assert results["config"]["distill"] == "argsterm"
    assert {hook for hook, _ in ArgsTerm.seen} == {"layers", "check", "init"}
    assert all(args == {"hint_layer": 1, "feat_dim": 16} for _, args in ArgsTerm.seen), ArgsTerm.seen


def test_kd_is_a_logit_pair_row_of_the_table() -> None:
    kd = next(r for r in method_table.METHODS if r.name == "kd")
    assert kd.kind == LOGIT_PAIR and kd.flag == "w_kd" and kd.term == "kd" and kd.weight == 1.0
    assert method_table.resolve(kd.builder).ARGS == ("kd_T", "logit_stand")
    assert method_table.find("distill", "kd") is None  # --distill kd still means "no white-box loss"
    assert method_table.method_order()[:2] == ("ce", "kd") and method_table.method_order().count("kd") == 1

