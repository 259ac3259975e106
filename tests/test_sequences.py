"""Tests for cluctl.sequences (SPEC §6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluctl.errors import UsageError
from cluctl.sequences import (
    PRESETS,
    Op,
    depends_on_seed,
    format_sequence,
    learned_after,
    parse_sequence,
    preset,
    resolve_sequence,
    validate,
)

# The SPEC table's N = 20 and N = 5 columns, written out in full (not generated).
# E4 lists only the learn prefix; its final U r is checked separately.
EXPECTED: dict[tuple[str, int], list[str]] = {
    ("A4", 20): [  # L0-19 U19-1
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "L10", "L11",
        "L12", "L13", "L14", "L15", "L16", "L17", "L18", "L19", "U19", "U18", "U17", "U16",
        "U15", "U14", "U13", "U12", "U11", "U10", "U9", "U8", "U7", "U6", "U5", "U4",
        "U3", "U2", "U1",
    ],
    ("A4", 5): [  # L0-4 U4-1
        "L0", "L1", "L2", "L3", "L4", "U4", "U3", "U2", "U1",
    ],
    ("B4", 20): [
        "L0", "L1", "U1", "L1", "L2", "U2", "L2", "L3", "U3", "L3", "L4", "U4",
        "L4", "L5", "U5", "L5", "L6", "U6", "L6", "L7", "U7", "L7", "L8", "U8",
        "L8", "L9", "U9", "L9", "L10", "U10", "L10", "L11", "U11", "L11", "L12", "U12",
        "L12", "L13", "U13", "L13", "L14", "U14", "L14", "L15", "U15", "L15", "L16", "U16",
        "L16", "L17", "U17", "L17", "L18", "U18", "L18", "L19", "U19", "L19",
    ],
    ("B4", 5): [  # L0 L1 U1 L1 L2 U2 L2 L3 U3 L3 L4 U4 L4
        "L0", "L1", "U1", "L1", "L2", "U2", "L2", "L3", "U3", "L3", "L4", "U4",
        "L4",
    ],
    ("C4", 20): [  # L0-14 U14-10 L15-19
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "L10", "L11",
        "L12", "L13", "L14", "U14", "U13", "U12", "U11", "U10", "L15", "L16", "L17", "L18",
        "L19",
    ],
    ("C4", 5): [  # L0-3 U3-2 L4
        "L0", "L1", "L2", "L3", "U3", "U2", "L4",
    ],
    ("C4v2", 20): [  # L0-9 U9-5 L10-19
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "U9", "U8",
        "U7", "U6", "U5", "L10", "L11", "L12", "L13", "L14", "L15", "L16", "L17", "L18",
        "L19",
    ],
    ("C4v2", 5): [  # L0-1 U1 L2-4
        "L0", "L1", "U1", "L2", "L3", "L4",
    ],
    ("D4", 20): [  # L0-19 U18-15 U13-10 U8-5 U3-1
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "L10", "L11",
        "L12", "L13", "L14", "L15", "L16", "L17", "L18", "L19", "U18", "U17", "U16", "U15",
        "U13", "U12", "U11", "U10", "U8", "U7", "U6", "U5", "U3", "U2", "U1",
    ],
    ("D4", 5): [  # L0-4 U3-1
        "L0", "L1", "L2", "L3", "L4", "U3", "U2", "U1",
    ],
    ("F4", 20): [  # L0-9 U9-5 L10-19 L5-9
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "U9", "U8",
        "U7", "U6", "U5", "L10", "L11", "L12", "L13", "L14", "L15", "L16", "L17", "L18",
        "L19", "L5", "L6", "L7", "L8", "L9",
    ],
    ("F4", 5): [  # L0-1 U1 L2-4 L1
        "L0", "L1", "U1", "L2", "L3", "L4", "L1",
    ],
    ("G4", 20): [  # L0-9 U9-5 L10-14 L5-9 L15-19
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "U9", "U8",
        "U7", "U6", "U5", "L10", "L11", "L12", "L13", "L14", "L5", "L6", "L7", "L8",
        "L9", "L15", "L16", "L17", "L18", "L19",
    ],
    ("G4", 5): [  # L0-1 U1 L2-3 L1 L4
        "L0", "L1", "U1", "L2", "L3", "L1", "L4",
    ],
    ("H4", 20): [  # L0-19 U0 U4 U9 U14
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "L10", "L11",
        "L12", "L13", "L14", "L15", "L16", "L17", "L18", "L19", "U0", "U4", "U9", "U14",
    ],
    ("H4", 5): [  # L0-4 U0
        "L0", "L1", "L2", "L3", "L4", "U0",
    ],
    ("E4", 20): [  # L0-19
        "L0", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9", "L10", "L11",
        "L12", "L13", "L14", "L15", "L16", "L17", "L18", "L19",
    ],
    ("E4", 5): [  # L0-4
        "L0", "L1", "L2", "L3", "L4",
    ],
}


def labels(ops: list[Op]) -> list[str]:
    return [str(op) for op in ops]


@pytest.mark.parametrize("name,n", sorted(k for k in EXPECTED if k[0] != "E4"))
def test_preset_matches_table(name: str, n: int) -> None:
    assert labels(preset(name, n)) == EXPECTED[(name, n)]
    assert labels(resolve_sequence(name, n)) == EXPECTED[(name, n)]


def test_b4_n20_has_58_ops() -> None:
    assert len(EXPECTED[("B4", 20)]) == 58
    assert len(preset("B4", 20)) == 58


def test_preset_table_compact_forms() -> None:
    # The table's compact notation itself, via the text parser.
    compact = {
        ("A4", 20): "L0-19 U19-1",
        ("C4", 20): "L0-14 U14-10 L15-19",
        ("C4v2", 20): "L0-9 U9-5 L10-19",
        ("D4", 20): "L0-19 U18-15 U13-10 U8-5 U3-1",
        ("F4", 20): "L0-9 U9-5 L10-19 L5-9",
        ("G4", 20): "L0-9 U9-5 L10-14 L5-9 L15-19",
        ("H4", 20): "L0-19 U0 U4 U9 U14",
        ("A4", 5): "L0-4 U4-1",
        ("C4", 5): "L0-3 U3-2 L4",
        ("C4v2", 5): "L0-1 U1 L2-4",
        ("D4", 5): "L0-4 U3-1",
        ("F4", 5): "L0-1 U1 L2-4 L1",
        ("G4", 5): "L0-1 U1 L2-3 L1 L4",
        ("H4", 5): "L0-4 U0",
    }
    for (name, n), text in compact.items():
        assert preset(name, n) == parse_sequence(text, n), (name, n)
        assert labels(parse_sequence(text, n)) == EXPECTED[(name, n)]


def test_presets_n4_edge() -> None:
    assert labels(preset("C4", 4)) == ["L0", "L1", "L2", "U2", "L3"]
    assert labels(preset("C4v2", 4)) == ["L0", "L1", "U1", "L2", "L3"]
    assert labels(preset("G4", 4)) == ["L0", "L1", "U1", "L2", "L1", "L3"]
    assert labels(preset("D4", 4)) == ["L0", "L1", "L2", "L3", "U2", "U1"]
    assert labels(preset("H4", 4)) == ["L0", "L1", "L2", "L3", "U0"]


def test_h4_unlearns_task_zero() -> None:
    ops = preset("H4", 20)
    assert Op("U", 0) in ops
    assert learned_after(ops)[-1] == [1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13, 15, 16, 17, 18, 19]
    assert parse_sequence("U0", 1) == [Op("U", 0)]


@pytest.mark.parametrize("n", [20, 5])
def test_e4_shape_and_range(n: int) -> None:
    for seed in range(50):
        ops = preset("E4", n, seed)
        assert labels(ops[:-1]) == EXPECTED[("E4", n)]
        last = ops[-1]
        assert last.kind == "U" and 0 <= last.task < n
        validate(ops, n)


def test_e4_deterministic_documented_formula_and_varies() -> None:
    draws = set()
    for seed in [0, 1, 2, 3, 7, 42, 1234, 2**40]:
        a = preset("E4", 20, seed)
        assert a == preset("E4", 20, seed) == resolve_sequence("e4", 20, seed)
        assert a[-1].task == int(np.random.default_rng([seed, 0xE4]).integers(0, 20))
        draws.add(a[-1].task)
    assert len(draws) > 1
    assert len({preset("E4", 20, s)[-1].task for s in range(200)}) == 20  # covers 0..19


def test_e4_bad_seed() -> None:
    with pytest.raises(UsageError):
        preset("E4", 20, -1)


def test_preset_names_case_insensitive() -> None:
    assert preset("a4", 5) == preset("A4", 5)
    assert preset("c4v2", 5) == preset("C4v2", 5) == preset("C4V2", 5)
    assert resolve_sequence(" c4V2 ", 20) == preset("C4v2", 20)


def test_unknown_preset_and_small_n() -> None:
    with pytest.raises(UsageError, match="Z9"):
        preset("Z9", 20)
    for name in PRESETS:
        for n in (0, 1, 2, 3):
            with pytest.raises(UsageError, match="N >= 4"):
                preset(name, n)
            with pytest.raises(UsageError, match="N >= 4"):
                resolve_sequence(name.lower(), n)


def test_depends_on_seed() -> None:
    assert depends_on_seed("E4")
    assert depends_on_seed("e4")
    for name in PRESETS:
        if name != "E4":
            assert not depends_on_seed(name)
    assert not depends_on_seed("L0-4 U3")


@pytest.mark.parametrize("n", range(4, 31))
def test_all_presets_valid(n: int) -> None:
    for name in PRESETS:
        for seed in (0, 1, 99):
            ops = preset(name, n, seed)
            validate(ops, n)
            assert resolve_sequence(name, n, seed) == ops
            assert parse_sequence(format_sequence(ops), n) == ops
            assert all(0 <= op.task < n for op in ops)


# ------------------------------------------------------------------ parsing


def test_op_str() -> None:
    assert str(Op("L", 3)) == "L3"
    assert str(Op("U", 12)) == "U12"


def test_parse_ranges_up_and_down() -> None:
    assert labels(parse_sequence("L5-9", 10)) == ["L5", "L6", "L7", "L8", "L9"]
    assert labels(parse_sequence("U19-1", 20)) == [f"U{t}" for t in (19, 18, 17, 16, 15, 14, 13,
                                                                     12, 11, 10, 9, 8, 7, 6, 5,
                                                                     4, 3, 2, 1)]
    assert labels(parse_sequence("L9-5", 10)) == ["L9", "L8", "L7", "L6", "L5"]
    assert labels(parse_sequence("L3-3", 10)) == ["L3"]
    assert labels(parse_sequence("L0-1", 2)) == ["L0", "L1"]


def test_parse_separators_and_case() -> None:
    want = ["L0", "L1", "L2", "U2", "L3"]
    for text in ["L0-2 U2 L3", "L0-2,U2,L3", "l0-2, u2 ,l3", "  L0-2\tU2\n,L3  ", "L0-2,,U2 , L3,"]:
        assert labels(parse_sequence(text, 4)) == want, text
    assert parse_sequence("l3", 4) == [Op("L", 3)]
    assert parse_sequence("L03", 4) == [Op("L", 3)]


@pytest.mark.parametrize("token", ["X3", "L", "L3-", "L-3", "L3-4-5", "3", "LU3", "L3x", "U-0", "L+3",
                                    "L3--4", "L٣"])
def test_parse_malformed_tokens(token: str) -> None:
    bad = token
    with pytest.raises(UsageError) as exc:
        parse_sequence(f"L0 {token}", 10)
    msg = str(exc.value)
    assert repr(bad) in msg
    assert "L0-19" in msg  # the expected form
    assert "\n" not in msg


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,\n"])
def test_parse_empty(text: str) -> None:
    with pytest.raises(UsageError, match="empty sequence"):
        parse_sequence(text, 10)
    with pytest.raises(UsageError, match="empty sequence"):
        resolve_sequence(text, 10)


@pytest.mark.parametrize("token", ["L20", "U25", "L0-20", "L20-0", "U99-1"])
def test_parse_out_of_range(token: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_sequence(f"L0-19 {token}", 20)
    assert repr(token) in str(exc.value)
    assert "0..19" in str(exc.value)


# ------------------------------------------------------------------ validation


def test_validate_unlearn_before_learn() -> None:
    with pytest.raises(UsageError) as exc:
        resolve_sequence("L0 L1 U2", 5)
    assert str(exc.value).startswith(
        "sequence op 3 (U2) unlearns task 2, which is not learned at that point"
    )


def test_validate_double_unlearn() -> None:
    with pytest.raises(UsageError, match=r"sequence op 4 \(U1\) unlearns task 1"):
        resolve_sequence("L0-1 U1 U1", 5)
    # relearning in between makes it fine
    assert labels(resolve_sequence("L0-1 U1 L1 U1", 5)) == ["L0", "L1", "U1", "L1", "U1"]


def test_validate_first_op_unlearn() -> None:
    with pytest.raises(UsageError, match=r"op 1 \(U0\)"):
        validate([Op("U", 0)], 4)


def test_validate_out_of_range_and_bad_ops() -> None:
    with pytest.raises(UsageError, match=r"op 2 \(L7\).*0\.\.4"):
        validate([Op("L", 0), Op("L", 7)], 5)
    with pytest.raises(UsageError):
        validate([Op("L", -1)], 5)
    with pytest.raises(UsageError):
        validate([Op("X", 1)], 5)
    with pytest.raises(UsageError, match="empty"):
        validate([], 5)


def test_relearn_allowed() -> None:
    ops = resolve_sequence("L0 L1 L0 L0", 4)
    assert learned_after(ops) == [[0], [0, 1], [0, 1], [0, 1]]


def test_learned_after() -> None:
    ops = parse_sequence("L0-3 U3-2 L4 L2", 5)
    assert learned_after(ops) == [
        [0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 2], [0, 1], [0, 1, 4], [0, 1, 4, 2],
    ]
    assert learned_after([]) == []
    with pytest.raises(UsageError):
        learned_after([Op("U", 1)])


# ------------------------------------------------------------------ formatting


def test_format_examples() -> None:
    assert format_sequence(preset("A4", 5)) == "L0-4 U4-1"
    assert format_sequence(preset("C4", 20)) == "L0-14 U14-10 L15-19"
    assert format_sequence(preset("D4", 20)) == "L0-19 U18-15 U13-10 U8-5 U3-1"
    assert format_sequence(preset("G4", 20)) == "L0-9 U9-5 L10-14 L5-9 L15-19"
    assert format_sequence(preset("H4", 20)) == "L0-19 U0 U4 U9 U14"
    assert format_sequence(preset("F4", 5)) == "L0-1 U1 L2-4 L1"
    assert format_sequence([Op("L", 3), Op("L", 3)]) == "L3 L3"
    assert format_sequence([Op("L", 1), Op("L", 2), Op("L", 1), Op("L", 0)]) == "L1-2 L1-0"


@st.composite
def valid_sequences(draw: st.DrawFn) -> tuple[list[Op], int]:
    n = draw(st.integers(1, 30))
    length = draw(st.integers(1, 40))
    learned: list[int] = []
    ops: list[Op] = []
    for _ in range(length):
        if learned and draw(st.booleans()):
            t = draw(st.sampled_from(learned))
            learned.remove(t)
            ops.append(Op("U", t))
        else:
            # bias towards neighbours of the previous task to get long ranges
            prev = ops[-1].task if ops else 0
            t = draw(st.one_of(st.integers(0, n - 1),
                               st.sampled_from([max(prev - 1, 0), min(prev + 1, n - 1)])))
            if t not in learned:
                learned.append(t)
            ops.append(Op("L", t))
    return ops, n


@settings(max_examples=300, deadline=None)
@given(valid_sequences())
def test_format_round_trip_valid(case: tuple[list[Op], int]) -> None:
    ops, n = case
    validate(ops, n)
    text = format_sequence(ops)
    assert parse_sequence(text, n) == ops
    assert resolve_sequence(text, n) == ops
    assert len(text.split()) <= len(ops)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(Op, st.sampled_from(["L", "U"]), st.integers(0, 12)), min_size=1, max_size=40))
def test_format_round_trip_any(ops: list[Op]) -> None:
    assert parse_sequence(format_sequence(ops), 13) == ops
