"""The cheapest checks that a service answers (runtime/waiting.py), on real loopback sockets."""

from __future__ import annotations

from runtime.waiting import any_answers, unanswered


def test_unanswered_names_each_address_of_a_list_where_nothing_listens(listening, closed):
    assert unanswered(f"{listening}, {closed},") == [closed]
    assert unanswered([listening]) == []
    assert unanswered("") == []


def test_a_list_answers_while_any_one_of_its_addresses_does(listening, closed):
    assert any_answers(f"{closed},{listening}")
    assert not any_answers(closed)
    assert not any_answers("")
