"""harness.environment: variables set for a block only, then restored."""

from __future__ import annotations

import pytest

from harness.environment import environment_defaults


def test_missing_variables_exist_only_inside_the_block():
    env = {"PATH": "/bin"}
    with environment_defaults({"A": "1", "B": "2"}, env):
        assert env == {"PATH": "/bin", "A": "1", "B": "2"}
    assert env == {"PATH": "/bin"}


def test_a_value_the_user_set_is_kept():
    env = {"A": "0"}
    with environment_defaults({"A": "1", "B": "2"}, env):
        assert env == {"A": "0", "B": "2"}
    assert env == {"A": "0"}


def test_the_environment_is_restored_after_an_error_and_after_changes_inside():
    env = {"A": "0"}
    with pytest.raises(RuntimeError), environment_defaults({"A": "1", "B": "2"}, env):
        env["A"], env["B"] = "changed", "changed"
        raise RuntimeError
    assert env == {"A": "0"}


def test_override_sets_every_value_and_still_restores():
    env = {"A": "0"}
    with environment_defaults({"A": "1", "B": "2"}, env, override=True):
        assert env == {"A": "1", "B": "2"}
    assert env == {"A": "0"}
