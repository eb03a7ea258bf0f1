"""Marker pagination (spec §2.3) over jobs, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from tunehouse.core.errors import InvalidParameter
from tunehouse.core.jobs import create_job, delete_job, get_job, jobs_query
from tunehouse.core.pagination import Page, marker_page
from tunehouse.store.models import Job


@pytest.fixture
def account(make_account) -> int:
    return make_account()


def make_jobs(database, account_id: int, n: int) -> list[str]:
    """n jobs of one account, oldest first; returns their keys."""
    with database.session() as s:
        return [create_job(s, account_id, f"job-{i:03d}").key for i in range(n)]


def page(database, account_id: int, marker: str = "", max_keys: int = 10, reverse: bool = False) -> Page:
    with database.session() as s:
        got = marker_page(s, jobs_query(account_id), Job, marker, max_keys, reverse)
        got.items = [j.key for j in got.items]
        return got


def test_spec_example_first_page_is_a_b_truncated_with_next_marker_c(database, account):
    a, b, c = make_jobs(database, account, 3)

    first = page(database, account, max_keys=2)

    assert first.items == [a, b]
    assert first.is_truncated
    assert first.next_marker == c


def test_spec_example_page_from_marker_c_is_c_alone_and_not_truncated(database, account):
    _, _, c = make_jobs(database, account, 3)

    last = page(database, account, marker=c, max_keys=2)

    assert last.items == [c]
    assert not last.is_truncated
    assert last.next_marker is None


def test_marker_and_effective_page_size_are_echoed(database, account):
    _, b, _ = make_jobs(database, account, 3)

    got = page(database, account, marker=b, max_keys=2)

    assert (got.marker, got.max_keys) == (b, 2)


def test_no_marker_starts_at_the_oldest_item_and_echoes_an_empty_marker(database, account):
    keys = make_jobs(database, account, 3)

    got = page(database, account)

    assert got.items == keys
    assert got.marker == ""


def test_page_that_holds_exactly_the_rest_is_not_truncated(database, account):
    keys = make_jobs(database, account, 2)

    got = page(database, account, max_keys=2)

    assert got.items == keys
    assert not got.is_truncated
    assert got.next_marker is None


def test_following_next_markers_visits_every_item_once(database, account):
    keys = make_jobs(database, account, 7)
    seen: list[str] = []
    marker = ""
    while True:
        got = page(database, account, marker=marker, max_keys=3)
        seen += got.items
        if not got.is_truncated:
            break
        marker = got.next_marker

    assert seen == keys


def test_page_reverse_lists_newest_first(database, account):
    a, b, c = make_jobs(database, account, 3)

    got = page(database, account, max_keys=2, reverse=True)

    assert got.items == [c, b]
    assert got.is_truncated
    assert got.next_marker == a


def test_page_reverse_from_a_marker_continues_towards_the_oldest(database, account):
    a, b, _ = make_jobs(database, account, 3)

    got = page(database, account, marker=b, max_keys=2, reverse=True)

    assert got.items == [b, a]
    assert not got.is_truncated


def test_max_keys_above_100_is_clamped_to_100(database, account):
    keys = make_jobs(database, account, 101)

    got = page(database, account, max_keys=1000)

    assert got.max_keys == 100
    assert got.items == keys[:100]
    assert got.is_truncated
    assert got.next_marker == keys[100]


@pytest.mark.parametrize("max_keys", [0, -1])
def test_max_keys_of_zero_or_less_is_invalid(database, account, max_keys):
    make_jobs(database, account, 1)

    with pytest.raises(InvalidParameter) as info:
        page(database, account, max_keys=max_keys)

    assert info.value.field == "maxKeys"


def test_unknown_marker_is_invalid(database, account):
    make_jobs(database, account, 1)

    with pytest.raises(InvalidParameter) as info:
        page(database, account, marker="nosuchjob123")

    assert info.value.field == "marker"


def test_marker_of_another_accounts_item_is_unknown(database, account, make_account):
    make_jobs(database, account, 2)
    (foreign,) = make_jobs(database, make_account(), 1)

    with pytest.raises(InvalidParameter) as info:
        page(database, account, marker=foreign)

    assert info.value.field == "marker"


def test_marker_of_a_deleted_item_is_unknown(database, account):
    a, _ = make_jobs(database, account, 2)
    with database.session() as s:
        delete_job(s, get_job(s, account, a))

    with pytest.raises(InvalidParameter):
        page(database, account, marker=a)


def test_pages_hold_only_the_accounts_own_items(database, account, make_account):
    mine = make_jobs(database, account, 2)
    make_jobs(database, make_account(), 2)

    assert page(database, account).items == mine
