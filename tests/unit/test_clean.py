"""String cleaning: normalisation, PII masking (recall and precision), exact and near duplicates."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.clean import (
    PII_KINDS,
    NearDupConfig,
    NearDuplicateIndex,
    PiiMatch,
    dedup_key,
    exact_duplicates,
    find_pii,
    mask_pii,
    near_duplicates,
    normalize_text,
)

# ---------------------------------------------------------------------------------------------
# normalize_text / dedup_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Whitespace is content (code, Markdown, poetry): kept exactly, only line breaks unified.
        ("  hello   world  ", "  hello   world  "),
        ("a\tb \t c", "a\tb \t c"),
        ("line one   \r\nline two\rline three", "line one   \nline two\nline three"),
        ("para one\n\n\n\n\npara two", "para one\n\n\n\n\npara two"),
        ("for i in x:\n  if i:\n    print(i)", "for i in x:\n  if i:\n    print(i)"),
        ("\ufeffzero\u200bwidth\x00 and\x1b escape", "zerowidth and escape"),
        ("\x1b[31mred\x1b[0m text", "red text"),  # a whole ANSI colour code goes, not just \x1b
        ("non\xa0breaking\u3000spaces", "non\xa0breaking\u3000spaces"),
        ("cafe\u0301", "caf\xe9"),  # NFC composes e + combining acute
        ("e\u200b\u0301", "\xe9"),  # ...also once a removed character stops separating them
        ("\u200d\u200c kept joiners", "\u200d\u200c kept joiners"),  # meaningful in Persian, emoji
        ("\n\n  indented\n", "\n\n  indented\n"),
        ("", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "  A  messy\t\ttext \r\n\r\n\r\n\r\nwith\u200b everything\x00\x07 \u2028 in it  ",
        "e\u200b\u0301 \n \u0301 \n\n\n x\x1b\u200b[1m",
        "\t\n \n\t\n",
        "İstanbul ß \ufb01 \ud800 lone surrogate",
    ],
)
def test_normalize_text_is_idempotent(raw: str) -> None:
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_dedup_key_ignores_case_and_whitespace() -> None:
    assert dedup_key("  The  Movie\nwas GREAT \t") == "the movie was great"
    assert dedup_key("Straße") == dedup_key("STRASSE")  # casefold, not lower


def test_exact_duplicates_point_at_the_first_occurrence() -> None:
    texts = ["Hello world", "another one", "hello   WORLD ", "Another one\n", "hello world", "new"]
    assert exact_duplicates(texts) == [None, None, 0, 1, 0, None]
    assert exact_duplicates([]) == []


# ---------------------------------------------------------------------------------------------
# PII

POSITIVES = [
    ("Mail jane.doe+news@example.co.uk today.", "Mail <EMAIL> today.", "EMAIL"),
    ("Call +1 (555) 123-4567 now.", "Call <PHONE> now.", "PHONE"),
    ("Call (555) 123-4567 now.", "Call <PHONE> now.", "PHONE"),
    ("Ebony Moore, (123) 456-7891, Boston", "Ebony Moore, <PHONE>, Boston", "PHONE"),
    ("Call 555-123-4567 now.", "Call <PHONE> now.", "PHONE"),
    ("Call 555.123.4567 now.", "Call <PHONE> now.", "PHONE"),
    ("London: +44 20 7946 0958.", "London: <PHONE>.", "PHONE"),
    ("Berlin: +49 30 123456789.", "Berlin: <PHONE>.", "PHONE"),
    ("Paris: +33 1 23 45 67 89.", "Paris: <PHONE>.", "PHONE"),
    ("Pay with 4111 1111 1111 1111 please", "Pay with <CREDIT_CARD> please", "CREDIT_CARD"),
    ("Pay with 4111-1111-1111-1111 please", "Pay with <CREDIT_CARD> please", "CREDIT_CARD"),
    ("Pay with 5500005555555559 please", "Pay with <CREDIT_CARD> please", "CREDIT_CARD"),
    ("Amex 378282246310005 works", "Amex <CREDIT_CARD> works", "CREDIT_CARD"),
    ("Card 4111 1111 1111 1111 12 times", "Card <CREDIT_CARD> 12 times", "CREDIT_CARD"),
    ("Server 192.168.1.20 is down.", "Server <IPV4> is down.", "IPV4"),
    ("DNS is 8.8.8.8", "DNS is <IPV4>", "IPV4"),
    ("Host 2001:db8::1 replied.", "Host <IPV6> replied.", "IPV6"),
    ("Gateway fe80::1 is local", "Gateway <IPV6> is local", "IPV6"),
    ("Link fe80::1ff:fe23:4567:890a up", "Link <IPV6> up", "IPV6"),
    ("Full 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "Full <IPV6>.", "IPV6"),
    ("Send to GB82 WEST 1234 5698 7654 32 today", "Send to <IBAN> today", "IBAN"),
    ("Send to DE89370400440532013000.", "Send to <IBAN>.", "IBAN"),
]


@pytest.mark.parametrize(("text", "masked", "kind"), POSITIVES)
def test_each_kind_is_masked_with_its_placeholder(text: str, masked: str, kind: str) -> None:
    assert kind in PII_KINDS
    assert mask_pii(text) == (masked, Counter({kind: 1}))


def test_several_kinds_in_one_text_are_counted() -> None:
    text = "a@b.io or 8.8.8.8 or 9.9.9.9, card 4111-1111-1111-1111, tel 555-123-4567"
    assert mask_pii(text) == (
        "<EMAIL> or <IPV4> or <IPV4>, card <CREDIT_CARD>, tel <PHONE>",
        Counter({"IPV4": 2, "EMAIL": 1, "CREDIT_CARD": 1, "PHONE": 1}),
    )


def test_find_pii_returns_sorted_spans() -> None:
    text = "ip 10.0.0.1 then x@y.org"
    assert find_pii(text) == [PiiMatch("IPV4", 3, 11, "10.0.0.1"), PiiMatch("EMAIL", 17, 24, "x@y.org")]


@pytest.mark.parametrize(
    ("text", "masked", "kind"),
    [
        # A Luhn-valid local part is part of the address, not a card next to an "@".
        ("write to 4111111111111111@mail.com", "write to <EMAIL>", "EMAIL"),
        # An IPv4-mapped IPv6 address is one IPv6 address, not an IPv4 after some colons.
        ("from ::ffff:192.168.1.1 today", "from <IPV6> today", "IPV6"),
    ],
)
def test_overlaps_go_to_the_more_specific_kind(text: str, masked: str, kind: str) -> None:
    assert mask_pii(text) == (masked, Counter({kind: 1}))


NEGATIVES = [
    "Python 3.11.7, release v1.2.3 and Windows build 10.0.19045.",
    "Dates: 2024-01-15, 15/01/2024 and 01.02.2023.",
    "It started at 12:30:45 sharp.",
    "Numbers 12345, 3.14159, 1,000,000 and the year 2024.",
    "A bare run 5551234567 is not a phone; neither is 555-1234 or 2024-555-1234.",
    "Scores of 100 200 3000 and 12 34 56 78 90.",
    "Invalid card 4111 1111 1111 1112 fails Luhn.",
    "Bad IBAN GB82 WEST 1234 5698 7654 33 fails mod 97.",
    "Not an address: 999.1.1.1 or 1.2.3.4.5 or 192.168.1.",
    "C++ std::vector, Note:: this, cafe::babe and a bare :: in prose.",
    "Python slices b[::2], x[1::3] and s[10::-1].",
    "ISBN 978-3-16-148410-0 and order 1234567890123.",
    "A signed number +3.14159265358 and a price of $1,234,567.89.",
    "Ratios 2:1, timecode 10:30:00:00.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_lookalikes_are_left_byte_for_byte(text: str) -> None:
    assert mask_pii(text) == (text, Counter())


# ---------------------------------------------------------------------------------------------
# Near duplicates

BASES = [
    "The committee will meet again next Thursday to review the budget proposal and decide whether the new library can open in spring.",
    "After the storm passed, volunteers spent the whole weekend clearing fallen branches from the roads and checking on elderly neighbours.",
    "Our recipe calls for two cups of flour, a pinch of salt, three eggs and enough warm milk to make a smooth batter.",
]
PLANTED = [  # (index of the base it was made from, the edited text)
    (0, BASES[0].replace("Thursday", "Friday")),  # a changed word
    (1, BASES[1].replace("passed", "pased")),  # a typo
    (2, BASES[2].replace("batter.", "batter!")),  # punctuation
    (0, BASES[0].replace("proposal and", "proposal, and")),  # punctuation
    (1, BASES[1].replace("whole", "entire")),  # a changed word
]
UNRELATED = [
    "Our recipe calls for three cups of rice, a splash of soy sauce, two onions and enough cold water to cover everything.",
    "The committee rejected the budget proposal because the new library would cost far more than the town could afford.",
    "Satellite images show the glacier has retreated nearly two kilometres since survey teams first mapped it decades ago.",
]


def test_planted_edits_are_found_and_unrelated_sentences_are_not() -> None:
    texts = BASES + [text for _, text in PLANTED] + UNRELATED
    expected = [None] * len(BASES) + [base for base, _ in PLANTED] + [None] * len(UNRELATED)
    assert near_duplicates(texts) == expected


def test_near_duplicates_count_exact_copies_and_point_at_the_smallest_index() -> None:
    edited = BASES[0].replace("Thursday", "Friday")
    texts = [BASES[1], BASES[0], edited, BASES[0].upper(), "ok", "OK", "no"]
    # The upper-case copy of text 1 also near-duplicates text 2, but 1 is the smallest index;
    # "ok" is shorter than a shingle, so its whole key is its one shingle.
    assert near_duplicates(texts) == [None, None, 1, 1, None, 4, None]
    assert near_duplicates([]) == []


def test_the_threshold_decides_a_borderline_pair() -> None:
    pair = [
        BASES[0],
        "The council will meet again next Monday to review the school proposal and decide whether the new library can open in autumn.",
    ]
    assert near_duplicates(pair) == [None, None]  # about 0.6 similar: not at the default 0.8
    assert near_duplicates(pair, NearDupConfig(threshold=0.5)) == [None, 0]


def test_index_add_and_query() -> None:
    index = NearDuplicateIndex()
    for i, text in enumerate(BASES):
        index.add(f"held-out:{i}", text)
    index.add("copy", BASES[2].lower())
    assert len(index) == 4
    assert index.query(BASES[0].replace("Thursday", "Friday")) == ["held-out:0"]
    assert index.query(BASES[2]) == ["copy", "held-out:2"]
    assert index.query(UNRELATED[2]) == []
    with pytest.raises(ValueError, match="already in the index"):
        index.add("copy", "anything")


@pytest.mark.parametrize(
    "bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"num_perm": 1}, {"shingle_size": 0}]
)
def test_bad_near_dup_config_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        NearDupConfig(**bad)


def test_extreme_thresholds_still_build_an_index() -> None:
    # datasketch's LSH tuner refuses thresholds near 1 with few permutations; we tune lower instead.
    texts = ["abc def ghi", "ABC  def ghi", "abc def ghi!"]
    assert near_duplicates(texts, NearDupConfig(threshold=1.0, num_perm=16)) == [None, 0, None]
