"""Fixtures for the CLI tests: the same isolation and helpers as the study-file tests."""

from tests.config.conftest import _no_user_defaults, _restore_gc, write

__all__ = ["_no_user_defaults", "_restore_gc", "write"]
