"""
The report's claims about the K effect (REPORT.md, "Conclusion"), built so that no sentence says
more than its intervals. Per K, on mean XE, one family of tests: each part of the decomposition
against 0 (decomposition.PARTS) and, to name the largest, the leading part's magnitude against
each other part whose sign the family establishes (|a| - |b| as s_a a - s_b b, on the paired
windows). Holm's step-down over the family decides (alpha = 0.05); the table shows each interval
at its Holm level (stats.holm_levels), so an interval excludes 0 exactly where the family says so.

- a part whose interval includes 0 is never called a cause;
- a part below 0 helps (the twin arm's XE is lower): it is said with its sign;
- the largest part is named only when its magnitude exceeds every other established part's;
- an interval over documents only (one seed) or seeds only (one document) never supports a
  claim: it is shown (pointwise, outside the family), marked, and the sentence says "not established".
"""
import math
from dataclasses import dataclass, field

from harness.decomposition import PART_LABELS, PARTS
from harness.stats import LEVEL, holm, holm_levels, t_interval, t_p_value

ALPHA = 0.05
FULL = "seeds and documents"        # the only scope that supports a claim


def p_value(interval):
    """Two-sided p-value of 'zero' from an Interval's estimate, standard error and df."""
    if interval.covers == "n/a" or not interval.se:
        return 1.0
    return float(t_p_value(interval.value, interval.se ** 2, interval.df))


def at_level(interval, level):
    """The same estimate's interval at another confidence level (its se and df kept)."""
    if interval.covers == "n/a" or not interval.se:
        return list(interval.ci)
    return t_interval(interval.value, interval.se ** 2, interval.df, interval.covers, level)["ci"]


def holm_interval(test):
    """A test's interval at its Holm level (pointwise where the family gave it none)."""
    return at_level(test.interval, test.level if not math.isnan(test.level) else LEVEL)


@dataclass
class Test:
    what: str                       # "dilution", or "|dilution| > |sharing|"
    interval: object                # analysis.Interval, pointwise
    p: float
    against: str = None             # a comparison: the other part
    p_holm: float = math.nan
    level: float = math.nan
    supports: bool = False          # full scope: may support a claim

    @property
    def established(self):
        return self.supports and self.p_holm < ALPHA


@dataclass
class KClaims:
    k: int
    total: object                   # Interval
    parts: dict = field(default_factory=dict)       # part -> Test
    comparisons: list = field(default_factory=list)  # Test of the leader against each other part
    leader: str = None              # the part of the largest magnitude, if the family names it


def k_claims(parts):
    """The family of one K on mean XE (decomposition.Parts), decided by Holm."""
    claims = KClaims(parts.k, parts.total)
    for name, interval in parts.parts.items():
        claims.parts[name] = Test(name, interval, p_value(interval), supports=interval.covers == FULL)
    pointwise = [n for n, t in claims.parts.items() if t.supports and t.p < ALPHA]
    leader = max(pointwise, key=lambda n: abs(claims.parts[n].interval.value), default=None)
    for other in (n for n in pointwise if n != leader):
        pair = (leader, other) if (leader, other) in parts.magnitudes else (other, leader)
        if pair not in parts.magnitudes:
            continue                        # not measured: the largest cannot be named
        interval = parts.magnitudes[pair]
        if pair[0] != leader:               # stored as |other| - |leader|: turn it round
            interval = type(interval)(-interval.value, [-interval.ci[1], -interval.ci[0]], interval.covers,
                                      interval.se, interval.df)
        claims.comparisons.append(Test(f"|{leader}| > |{other}|", interval, p_value(interval), against=other,
                                       supports=interval.covers == FULL))
    # the family is the claims that could be made: one-seed tests support none, and counting them
    # would only make the step-down stricter for the tests that can
    family = [t for t in list(claims.parts.values()) + claims.comparisons if t.supports]
    if family:
        for test, p_adj, level in zip(family, holm([t.p for t in family]), holm_levels([t.p for t in family])):
            test.p_holm, test.level = float(p_adj), float(level)
    if leader is not None and claims.parts[leader].established:
        # the largest only against every other part: each must have an established sign, and
        # a smaller magnitude (a part whose sign is not established may be the larger one)
        rivals = [n for n in claims.parts if n != leader]
        others = {c.against: c for c in claims.comparisons}
        if all(claims.parts[n].established and n in others and others[n].established
               and others[n].interval.value > 0 for n in rivals):
            claims.leader = leader
    return claims


def holm_over_claims(tests):
    """Holm-adjusted p of [(Interval, p)] over the tests that can support a claim (intervals over
    seeds and documents); the others stay NaN, outside the family, as in k_claims."""
    inside = [i for i, (interval, _) in enumerate(tests) if interval.covers == FULL]
    adjusted = [math.nan] * len(tests)
    for i, p in zip(inside, holm([tests[i][1] for i in inside]) if inside else []):
        adjusted[i] = float(p)
    return adjusted


def with_holm(found, interval=lambda c: c.difference):
    """[(contrast, p)] of one family -> its contrasts, each with p_holm over those that can support
    a claim (holm_over_claims); interval(contrast) is the Interval the test is on."""
    for (contrast, _), p in zip(found, holm_over_claims([(interval(c), p) for c, p in found])):
        contrast.p_holm = p
    return [contrast for contrast, _ in found]


def holm_text(test):
    """A test's estimate with its interval at its Holm level, as the table shows it."""
    lo, hi = holm_interval(test)
    return f"{test.interval.value:.4f} [{lo:.4f}, {hi:.4f}]"


def sentence(c, fmt):
    """What one K's family establishes, in a sentence or two (intervals at their Holm levels)."""
    established = [n for n, t in c.parts.items() if t.established]
    said = [f"{PART_LABELS[n]} {holm_text(t)} ({'raises XE' if t.interval.value > 0 else 'helps'})"
            for n, t in c.parts.items() if t.established]
    unsupported = [n for n, t in c.parts.items() if not t.supports]
    text = f"K={c.k}: total {fmt(c.total, 4)}. "
    if not c.parts:
        return text + "No other arm ran at this K: the total is not split."
    if unsupported:
        text += (f"Not established ({', '.join(PART_LABELS[n] for n in unsupported)}): their intervals cover "
                 f"documents only (one seed) or less, which supports no claim. ")
    if not established:
        return text + ("No part is established as a cause (every Holm-adjusted interval over seeds and "
                       "documents includes 0)." if len(unsupported) < len(c.parts) else "No part is established.")
    text += "Established (Holm over this K's family): " + "; ".join(said) + ". "
    if c.leader:
        return text + f"The largest part is {PART_LABELS[c.leader]}."
    if len(established) == 1 and len(c.parts) > 1:
        return text + "It is the only established part" + (
            "; the others' intervals include 0." if not unsupported else ".")
    open_signs = [PART_LABELS[n] for n, t in c.parts.items() if not t.established]
    if open_signs:
        return text + (f"Which part is largest is not established: the sign of {', '.join(open_signs)} is not, "
                       f"so its magnitude is not compared.")
    return text + "Which part is largest is not established: the largest magnitudes are not separated."


def conclusion_lines(d, fmt):
    """The conclusion: one table of the parts at their Holm levels, then a sentence per K."""
    means = [p for p in d.parts if p.metric == "xe_mean"]
    claims = [k_claims(p) for p in means]
    names = [n for n in PART_LABELS if any(n in c.parts for c in claims)]
    lines = ["| K | total | " + " | ".join(PART_LABELS[n] for n in names) + " |",
             "|---" * (2 + len(names)) + "|"]
    for c in claims:
        cells = []
        for n in names:
            t = c.parts.get(n)
            if t is None:
                cells.append("—")
                continue
            lo, hi = holm_interval(t)
            mark = "" if t.supports else " †"
            star = " **" if t.established else ""
            cells.append(f"{t.interval.value:+.4f} [{lo:+.4f}, {hi:+.4f}]{mark}{star}")
        lines.append(f"| {c.k} | {fmt(c.total, 4)} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over t, nats. Each part's interval is at its Holm level within its K's family (the four "
              "parts against 0 and the comparisons that name the largest, alpha = 0.05); ** established. "
              "† one seed: a pointwise interval, outside the family, never a claim.", ""]
    return lines + [f"- {sentence(c, fmt)}" for c in claims], claims


def established(contrast):
    """A contrast (an Interval with its Holm p) establishes its sign: Holm p < ALPHA, full scope."""
    return contrast.p_holm < ALPHA and contrast.difference.covers == FULL


def established_ks(contrasts, below):
    """The K values (as text) whose contrast is established below 0 (below=True) or above it."""
    return [str(c.k) for c in contrasts if established(c) and (c.difference.value < 0) == below]


def size_parts_sentence(family):
    """What one pair's family establishes: the parts lower (or higher), signed, for the larger model."""
    def said(below):
        found = {}
        for c in family:
            for k in established_ks([c], below):
                found.setdefault(c.part, []).append(k)
        return "; ".join(f"{PART_LABELS[p]} at K = {', '.join(ks)}" for p, ks in found.items())
    smaller, larger = said(True), said(False)
    if not smaller and not larger:
        return "no part is established to change with size (Holm over its K values and parts)."
    text = f"lower for the larger model (signed; Holm over K and parts): {smaller or 'none'}"
    text += f"; higher for it: {larger}" if larger else ""
    open_parts = [PART_LABELS[p] for p in PARTS if any(c.part == p for c in family)
                  and not any(established(c) for c in family if c.part == p)]
    return text + (f"; not established at any K: {', '.join(open_parts)}." if open_parts else ".")


def size_xe_sentence(contrasts):
    """Without the arms, what the XE contrasts between sizes establish (Holm over K per pair)."""
    said = []
    for word, below in (("lower", True), ("higher", False)):
        ks = established_ks(contrasts, below)
        said += [f"{word} at K = {', '.join(ks)}"] if ks else []
    if not said:
        return "no difference in XE between the sizes is established (Holm over K)."
    return f"the larger model's XE is {'; '.join(said)} (Holm over K; the parts need the arms)."
