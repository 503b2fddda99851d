"""The ``summary.json`` key helpers (:mod:`sstorch.training.results`)."""

from sstorch.training.results import parse_pgd_key, pgd_key


def test_pgd_key_round_trip():
    assert pgd_key(20) == "test_pgd20_acc"
    for steps in (1, 20, 100):
        assert parse_pgd_key(pgd_key(steps)) == steps


def test_parse_pgd_key_other_keys():
    for key in ("test_clean_acc", "test_pgd_acc", "test_pgd20_acc_x", "xtest_pgd20_acc", ""):
        assert parse_pgd_key(key) is None
