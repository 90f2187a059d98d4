"""String-level cleaning: normalisation, PII masking, exact and near-duplicate detection.

Everything here works on plain strings; quality.py maps it over canonical records and reports what
changed. Near duplicates use MinHash + LSH from datasketch over character shingles of `dedup_key`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

PII_KINDS = ("EMAIL", "PHONE", "CREDIT_CARD", "IPV4", "IPV6", "IBAN")

# ---------------------------------------------------------------------------------------------
# Normalisation

# The line breaks str.splitlines() knows, other than \n itself and the C0 separators \x1c-\x1e
# (those are data-file control codes, not line breaks in prose, and are removed below).
_LINE_BREAKS = re.compile(r"\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# Whole ANSI escape sequences (colours in pasted terminal logs): removing only \x1b would leave "[31m".
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# Zero-width (non-)joiners are format characters that carry meaning (Persian/Indic spelling, emoji
# sequences), so they stay; every other control (Cc), format (Cf) or lone surrogate (Cs) goes.
_KEEP = frozenset("\n\t\u200c\u200d")
_DROPPED_CATEGORIES = frozenset(("Cc", "Cf", "Cs"))
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # the same rule, for the common ASCII case


def normalize_text(text: str) -> str:
    """The lossless canonical form of a text: line breaks as \n, control characters (and whole ANSI
    escape sequences) removed, Unicode NFC. Idempotent.

    Whitespace is content and is kept exactly: indentation, tabs, runs of spaces inside a line, blank
    lines and leading or trailing space. Code, Markdown, YAML, tables and poetry depend on it, and a
    model learns to produce what it is trained on. Comparisons that should ignore whitespace (dedup)
    use `dedup_key`, which squeezes it without rewriting the text.
    """
    text = _LINE_BREAKS.sub("\n", text)
    text = _ANSI_ESCAPE.sub("", text)
    if text.isascii():
        text = _ASCII_CONTROL.sub("", text)
    else:
        text = "".join(c for c in text if c in _KEEP or unicodedata.category(c) not in _DROPPED_CATEGORIES)
    # NFC last: dropping a control character can bring a base letter and a combining mark together
    # ("e\u200b\u0301"), and composing before that would leave the result non-NFC (not idempotent).
    return unicodedata.normalize("NFC", text)


def dedup_key(text: str) -> str:
    """Key under which two texts count as the same: case and whitespace do not matter."""
    key = " ".join(normalize_text(text).casefold().split())
    # casefold can decompose (e.g. "İ" -> "i̇"); recompose so equal keys are equal strings.
    return unicodedata.normalize("NFC", key)


# ---------------------------------------------------------------------------------------------
# PII: each kind is a candidate regex plus a validator, because a regex alone cannot check a Luhn or
# mod-97 checksum, an octet range, or IPv6 compression rules. Precision matters as much as recall:
# masking version strings, dates or prices would damage the data.


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    text: str


# Numbers must not be glued to more digits or to a word: "v1.2.3.4", "x4111...", "12.3.4.5.6".
_NUM_BEFORE = r"(?<![\w+])(?<!\d[.,-])"
_NUM_AFTER = r"(?![\w+])(?![.,-]\d)"

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
# Four dot-separated numbers, then ipaddress checks octets (rejects 999.1.1.1 and leading zeros).
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)")
# A maximal run of hex digits, colons and dots with at least two colons; ipaddress decides.
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(?!\w)")
# 13-19 digits, bare or in groups (4-4-4-4, Amex 4-6-5, ...) joined by one consistent space or dash.
_CARD = re.compile(_NUM_BEFORE + r"(?:\d{13,19}|\d{4}([ -])\d{4,6}(?:\1\d{1,6}){1,3})" + _NUM_AFTER)
# Country code, check digits, then 11-30 alphanumerics, bare or in space-separated groups of four.
_IBAN = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)(?!\w)")
# International: "+" and a country code, then digit groups. National: only the North American
# 3-3-4 shape, "(555) 123-4567" or with one consistent dash or dot, so dates (4-2-2), times and
# versions never fit; "555 123 4567" is left alone, as "100 200 3000" is more often prose.
_PHONE = re.compile(
    _NUM_BEFORE
    + r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d(?:[ .-]?\d){5,13}"
    + r"|(?:1[ .-])?(?:\(\d{3}\) ?\d{3}[ .-]|\d{3}(?P<sep>[.-])\d{3}(?P=sep))\d{4})"
    + _NUM_AFTER
)
_PHONE_GROUPS = re.compile(r"\d+")
_HAS_DIGIT = re.compile(r"\d")


def _shorter_at_spaces(candidate: str) -> Iterator[str]:
    """The candidate, then ever shorter prefixes cut at spaces: "4111 1111 1111 1111 12" may be a
    card followed by an unrelated number, and the regex cannot know which groups belong together.
    (Only spaces: "4111-1111-1111-1111-12" is one token, not a card and a number.)"""
    yield candidate
    for i in range(len(candidate) - 1, 0, -1):
        if candidate[i] == " ":
            yield candidate[:i]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_length(candidate: str) -> int | None:
    for prefix in _shorter_at_spaces(candidate):
        digits = prefix.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            return len(prefix)
    return None


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    # ISO 13616: letters become 10..35, and the whole number mod 97 must be 1.
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban_length(candidate: str) -> int | None:
    for prefix in _shorter_at_spaces(candidate):
        if _iban_ok(prefix.replace(" ", "")):
            return len(prefix)
    return None


def _phone_ok(candidate: str) -> bool:
    groups = _PHONE_GROUPS.findall(candidate)
    digits = sum(len(g) for g in groups)
    if not 10 <= digits <= 15:
        return False
    if not candidate.startswith("+") or len(groups) >= 3:
        return True  # the national shape is already exact in the regex
    # "+" and two groups: "+44 7911123456" is a phone, "+3.14159265358" is a signed number.
    return len(groups) == 1 or "." not in candidate


def _phone_length(candidate: str) -> int | None:
    for prefix in _shorter_at_spaces(candidate):
        if _phone_ok(prefix):
            return len(prefix)
    return None


def _ipv4_length(candidate: str) -> int | None:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return None
    return len(candidate)


def _ipv6_length(candidate: str) -> int | None:
    core = candidate.rstrip(".")  # sentence punctuation after the address
    if core.endswith(":") and not core.endswith("::"):
        core = core[:-1]  # "... at 2001:db8::1: then"
    # Hex-only runs such as "cafe::babe" or a bare "::" are far likelier prose or code than addresses.
    if not _HAS_DIGIT.search(core):
        return None
    # So are short compressed forms made of small numbers: Python slices "b[::2]", "x[1::3]". With
    # fewer than three groups, keep only those with a group that looks IPv6: "fe80::1", "2001::7".
    groups = [g for g in core.split(":") if g]
    if len(groups) < 3 and not any(len(g) >= 4 or not g.isdecimal() for g in groups):
        return None
    try:
        ipaddress.IPv6Address(core)
    except ValueError:
        return None
    return len(core)


# Order is priority when candidates overlap: an email swallows whatever digits it contains, then
# checksummed kinds (IBAN, card), then addresses (an IPv4-mapped IPv6 holds an IPv4), and phone
# numbers, the loosest pattern, last.
_DETECTORS: tuple[tuple[str, re.Pattern[str], Callable[[str], int | None]], ...] = (
    ("EMAIL", _EMAIL, len),
    ("IBAN", _IBAN, _iban_length),
    ("CREDIT_CARD", _CARD, _card_length),
    ("IPV6", _IPV6, _ipv6_length),
    ("IPV4", _IPV4, _ipv4_length),
    ("PHONE", _PHONE, _phone_length),
)


def find_pii(text: str) -> list[PiiMatch]:
    """Every PII span in `text`, non-overlapping, sorted by start."""
    if "@" not in text and not _HAS_DIGIT.search(text):
        return []  # every kind but email needs a digit; most training text has neither
    taken: list[PiiMatch] = []
    for kind, pattern, valid_length in _DETECTORS:
        for match in pattern.finditer(text):
            length = valid_length(match.group())
            if not length:
                continue
            start, end = match.start(), match.start() + length
            if all(end <= other.start or start >= other.end for other in taken):
                taken.append(PiiMatch(kind, start, end, text[start:end]))
    return sorted(taken, key=lambda m: m.start)


def mask_pii(text: str) -> tuple[str, Counter[str]]:
    """Replace each PII span with a typed placeholder ("<EMAIL>", ...); also count them per kind."""
    counts: Counter[str] = Counter()
    pieces: list[str] = []
    position = 0
    for match in find_pii(text):
        pieces += [text[position : match.start], f"<{match.kind}>"]
        counts[match.kind] += 1
        position = match.end
    pieces.append(text[position:])
    return "".join(pieces), counts


# ---------------------------------------------------------------------------------------------
# Duplicates


def exact_duplicates(texts: Sequence[str]) -> list[int | None]:
    """For each text, the index of the first earlier text with the same dedup_key, else None."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, text in enumerate(texts):
        j = first.setdefault(dedup_key(text), i)
        out.append(None if j == i else j)
    return out


@dataclass(frozen=True)
class NearDupConfig:
    # 0.8 estimated Jaccard of 5-character shingles: a one-word edit or a typo in a ~20-word sentence
    # stays around 0.85-0.9, while two different sentences on the same topic fall well below 0.5.
    threshold: float = 0.8
    # 128 permutations: the Jaccard estimate has a standard error of about 0.035 near 0.8, enough to
    # separate duplicates from merely related text, at 512 bytes of signature per text.
    num_perm: int = 128
    # Character 5-grams over dedup_key(text): words are too coarse for short texts such as SST-2
    # phrases (one changed word of 6 already puts word-set Jaccard at 5/7 = 0.71), and shorter
    # n-grams are shared by almost any two English texts.
    shingle_size: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {self.num_perm}")
        if self.shingle_size < 1:
            raise ValueError(f"shingle_size must be at least 1, got {self.shingle_size}")


# False negatives weigh 0.9 when datasketch picks the LSH bands: every candidate is checked against
# the threshold with its signature anyway, so a false positive costs one comparison, while a false
# negative is a duplicate never seen. At 0.8/128 this gives 14 bands of 9 rows instead of 9 x 13;
# on 8,000 SST-2 phrases it finds 555 of the 558 pairs estimated >= 0.8 (the default weights: 482).
_LSH_WEIGHTS = (0.1, 0.9)


@functools.lru_cache(maxsize=16)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) from datasketch's tuner; tuning takes ~50 ms, so it is done once."""
    for step in range(20):
        tuned = max(threshold - 0.05 * step, 0.01)
        try:
            lsh = MinHashLSH(threshold=tuned, num_perm=num_perm, weights=_LSH_WEIGHTS)
        except ValueError:
            # datasketch refuses fewer than 2 bands, which it picks near threshold 1 or with few
            # permutations; tuning a little lower only adds candidates, and those are checked anyway.
            continue
        return lsh.b, lsh.r
    raise AssertionError("unreachable: at threshold 0.01 datasketch uses one row per band")


def _shingles(key: str, size: int) -> list[bytes]:
    data = key.encode("utf-8")
    if len(key) <= size:
        return [data]  # too short to shingle: the whole key is its one shingle
    if len(data) == len(key):  # ASCII: byte slices are character slices, and cheaper
        return [data[i : i + size] for i in range(len(data) - size + 1)]
    return [key[i : i + size].encode("utf-8") for i in range(len(key) - size + 1)]


class _Signer:
    """MinHash signatures of dedup keys, with the costs datasketch would repeat per text paid once:
    one sketch is cleared and re-filled (no per-text copy of the permutations), and each distinct
    shingle is hashed once (texts share most shingles: SST-2 train has 87k distinct of 3.3M)."""

    def __init__(self, config: NearDupConfig) -> None:
        self.shingle_size = config.shingle_size
        self._sketch = MinHash(
            num_perm=config.num_perm, hashfunc=functools.lru_cache(maxsize=None)(sha1_hash32)
        )

    def __call__(self, key: str) -> LeanMinHash:
        self._sketch.clear()
        self._sketch.update_batch(_shingles(key, self.shingle_size))
        return LeanMinHash(self._sketch)


class _SignatureIndex:
    """LSH over MinHash signatures, keyed by int, with the threshold checked on each candidate."""

    def __init__(self, config: NearDupConfig) -> None:
        self.threshold = config.threshold
        params = _lsh_params(config.threshold, config.num_perm)
        self._lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=params)
        self._signatures: dict[int, LeanMinHash] = {}

    def add(self, key: int, signature: LeanMinHash) -> None:
        self._lsh.insert(key, signature, check_duplication=False)
        self._signatures[key] = signature

    def matches(self, signature: LeanMinHash) -> list[int]:
        candidates = self._lsh.query(signature)
        return [k for k in candidates if signature.jaccard(self._signatures[k]) >= self.threshold]


class NearDuplicateIndex:
    """Texts indexed by key; `query` returns the keys of those a text near-duplicates."""

    def __init__(self, config: NearDupConfig = NearDupConfig()) -> None:
        self.config = config
        self._sign = _Signer(config)
        self._index = _SignatureIndex(config)
        self._keys: dict[str, int] = {}
        self._names: list[str] = []

    def add(self, key: str, text: str) -> None:
        if key in self._keys:
            raise ValueError(f"key {key!r} is already in the index")
        signature = self._sign(dedup_key(text))
        self._keys[key] = len(self._names)
        self._index.add(len(self._names), signature)
        self._names.append(key)

    def query(self, text: str) -> list[str]:
        signature = self._sign(dedup_key(text))
        return sorted(self._names[i] for i in self._index.matches(signature))

    def __len__(self) -> int:
        return len(self._names)


def near_duplicates(texts: Sequence[str], config: NearDupConfig = NearDupConfig()) -> list[int | None]:
    """For each text, the smallest index of an earlier text it near-duplicates, else None.

    Exact duplicates (same dedup_key) count too. Only the first text of each key is signed and
    indexed: a later copy matches exactly what its first occurrence matches, plus that occurrence.
    """
    keys = [dedup_key(text) for text in texts]
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    sign, index = _Signer(config), _SignatureIndex(config)
    out: list[int | None] = [None] * len(texts)
    for i in sorted(first.values()):
        signature = sign(keys[i])
        out[i] = min(index.matches(signature), default=None)
        index.add(i, signature)
    for i, key in enumerate(keys):
        j = first[key]
        if j != i:
            out[i] = j if out[j] is None else out[j]
    return out
