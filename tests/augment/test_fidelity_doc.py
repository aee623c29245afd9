"""docs/augment_fidelity.md (numbers transcribed from REFERENCE.md) agrees with stlib/augment.

The doc's tables are parsed, not generated from the code, so a disagreement between the
reference and the code shows up here: level -> argument of every op (AutoAugment and
RandAugment constants), the policies v0-v3 and test, and RandAugment's op list.
"""
import re

import pytest

from stlib.augment.autoaugment import POLICIES
from stlib.augment.ops import AUTOAUGMENT_CONSTANTS, DETECTION_OPS, OPS, RANDAUGMENT_CONSTANTS
from stlib.augment.randaugment import RANDAUGMENT_OPS
from tests.conftest import REPO

DOC = REPO / "docs" / "augment_fidelity.md"
LEVELS = list(range(11))
NONE = "—"


def _sections() -> dict:
    """{heading text: body} for every markdown heading of the doc."""
    out, name, body = {}, None, []
    for line in DOC.read_text().splitlines():
        m = re.match(r"^#+\s+(.*)$", line)
        if m:
            if name is not None:
                out[name] = "\n".join(body)
            name, body = m.group(1).strip(), []
        else:
            body.append(line)
    out[name] = "\n".join(body)
    return out


def _table(section: str) -> list:
    """The first markdown table of `section`: list of dicts keyed by the header cells."""
    lines = [l.strip() for l in section.splitlines()]
    start = next(i for i, l in enumerate(lines) if l.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    header, sep, body = rows[0], rows[1], rows[2:]
    assert all(set(c) <= set("-: ") for c in sep), sep
    assert all(len(r) == len(header) for r in body), f"ragged table under {header}"
    return [dict(zip(header, r)) for r in body]


SECTIONS = _sections()


def _level_rows(heading: str) -> dict:
    rows = _table(SECTIONS[heading])
    table = {r["op"]: r for r in rows}
    assert len(table) == len(rows), "an op is listed twice"
    return table


def _check_args(name, row, constants):
    for level in LEVELS:
        cell = row[str(level)]
        ours = OPS[name].arg(level, constants)
        if cell == NONE:
            assert ours == 0.0, f"{name} L{level}: the doc says no argument, the code gives {ours}"
        else:
            if "." in cell:  # a real number: tolerance
                assert ours == pytest.approx(float(cell), abs=1e-6), f"{name} L{level}: doc {cell}, code {ours}"
            else:  # an integer (bits, threshold, pixels): exact
                assert ours == int(cell), f"{name} L{level}: doc {cell}, code {ours}"


def test_doc_lists_every_op_once():
    table = _level_rows("Level → argument: AutoAugment constants")
    assert set(table) == set(OPS)
    assert set(table) - {"Invert"} == set(DETECTION_OPS) and len(DETECTION_OPS) == 25


@pytest.mark.parametrize("name", list(OPS))
def test_level_to_argument_autoaugment(name):
    row = _level_rows("Level → argument: AutoAugment constants")[name]
    _check_args(name, row, AUTOAUGMENT_CONSTANTS)
    assert ("±" in row["argument"]) == OPS[name].signed, f"{name}: random sign"


def test_level_to_argument_randaugment():
    table = _level_rows("Level → argument: RandAugment constants")
    assert set(table) == {"Cutout", "TranslateX_BBox", "TranslateY_BBox"}
    for name, row in table.items():
        _check_args(name, row, RANDAUGMENT_CONSTANTS)
    # "every other RandAugment op has the same argument as under AutoAugment"
    for name in set(RANDAUGMENT_OPS) - set(table):
        assert [OPS[name].arg(l, RANDAUGMENT_CONSTANTS) for l in LEVELS] == \
            [OPS[name].arg(l, AUTOAUGMENT_CONSTANTS) for l in LEVELS], name


def _parse_entry(cell: str):
    name, prob, level = (s.strip() for s in cell.split(","))
    return name, float(prob), int(level)


@pytest.mark.parametrize("policy", ["v0", "v1", "v2", "v3", "test"])
def test_policy_tables(policy):
    rows = _table(SECTIONS[f"Policy {policy}"])
    assert [int(r["#"]) for r in rows] == list(range(1, len(rows) + 1))
    doc = tuple(tuple(_parse_entry(v) for k, v in r.items() if k.startswith("op") and not v.startswith(NONE))
                for r in rows)
    code = POLICIES[policy]
    assert len(doc) == len(code), f"{policy}: {len(doc)} sub-policies in the doc, {len(code)} in the code"
    for i, (d, c) in enumerate(zip(doc, code), 1):
        assert len(d) == len(c), f"{policy} row {i}: {d} vs {c}"
        for (dn, dp, dl), (cn, cp, cl) in zip(d, c):
            assert dn == cn and dl == cl and dp == pytest.approx(cp, abs=1e-9), f"{policy} row {i}: {d} vs {c}"
            assert dn in OPS


def test_randaugment_ops():
    rows = _table(SECTIONS["RandAugment ops"])
    assert [int(r["#"]) for r in rows] == list(range(1, len(rows) + 1))
    assert tuple(r["op"] for r in rows) == RANDAUGMENT_OPS
