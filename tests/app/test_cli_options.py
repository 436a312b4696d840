"""The command line takes its choices from the registries and option modules, and passes any space option on."""

from __future__ import annotations

import pytest

from nas.app.cli import _config_from_args, build_parser, main
from nas.pipeline.config import EVALUATORS, PROPOSAL_SOURCES, SUPERNET_MODES


def config_of(*argv: str):
    return _config_from_args(build_parser().parse_args(["search", *argv]))


def test_space_options_by_name_equal_the_shorthands():
    by_name = config_of("--space", "block", "--space-option", "groups=4", "--space-option", "blocks=2",
                        "--space-option", "grouping=mass")
    shorthand = config_of("--space", "block", "--groups", "4", "--blocks", "2", "--grouping", "mass")
    assert by_name.space_options == shorthand.space_options == {"groups": 4, "blocks": 2, "grouping": "mass"}
    assert config_of("--space-option", "grid=[4, 8, 16]").space_options == {"grid": [4, 8, 16]}
    assert config_of("--grid", "4,8,16").space_options == {"grid": [4, 8, 16]}


def test_a_space_option_the_space_does_not_take_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]):
    assert main(["search", "--runs", str(tmp_path), "--space-option", "groups=4", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the per-feature space does not take the options ['groups']" in err
    assert not list(tmp_path.iterdir()), "nothing is left behind"
    assert main(["search", "--space", "block", "--grouping", "mass", "--space-option", "grouping=count"]) == 2
    assert "both given" in capsys.readouterr().err
    assert main(["search", "--space-option", "not-a-name=1"]) == 2
    assert "--space-option takes KEY=VALUE" in capsys.readouterr().err


def test_choices_come_from_the_option_modules():
    search = build_parser()._subparsers._group_actions[0].choices["search"]
    actions = {action.dest: action for action in search._actions}
    assert tuple(actions["evaluator"].choices) == EVALUATORS
    assert tuple(actions["supernet"].choices) == SUPERNET_MODES
    assert tuple(actions["supernet_proposals"].choices) == PROPOSAL_SOURCES


def test_trials_and_retrained_count_left_out_are_the_controllers_and_given_are_kept():
    shape, frequency = config_of("--controller", "shape"), config_of("--controller", "frequency")
    assert (shape.trials, shape.retrain_top) == (24, 1)
    assert (frequency.trials, frequency.retrain_top) == (16, 5)
    given = config_of("--controller", "shape", "--trials", "18", "--retrain-top", "5")
    assert (given.trials, given.retrain_top) == (18, 5)
