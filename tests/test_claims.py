"""
The conclusion cannot overstate (harness/claims.py): hand-made decompositions of one K, each a
case the old "larger part" rule got wrong, and the sentences the family of tests allows.
"""
import math
import re

from harness.analysis import Interval
from harness.claims import conclusion_lines, k_claims, sentence
from harness.decomposition import Decomposition, Parts
from harness.report import fmt

FULL, ONE_SEED = "seeds and documents", "documents only"


def interval(value, se, covers=FULL, df=30.0):
    half = 2.042 * se                       # t(0.975, 30)
    return Interval(value, [value - half, value + half], covers, se, df)


def parts(total, covers=FULL, magnitudes=None, **values):
    """One K's Parts from (value, se) per part; magnitudes (a, b) -> (value, se) of |a| - |b|."""
    p = Parts(2, "xe_mean", interval(*total), {n: interval(*v, covers) for n, v in values.items()}, ["1", "2"])
    p.magnitudes = {pair: interval(*v, covers) for pair, v in (magnitudes or {}).items()}
    return p


def say(p):
    return sentence(k_claims(p), fmt)


def test_a_negative_part_helps_and_is_never_the_larger_by_its_sign():
    """identification -0.05 [-0.06, -0.04] (helps) and scarcity +0.02: the old rule compared signed
    values and named scarcity; the magnitude comparison names identification, with its sign."""
    p = parts((-0.03, 0.003), scarcity=(0.02, 0.002), identification=(-0.05, 0.003),
              magnitudes={("scarcity", "identification"): (-0.03, 0.004)})
    text = say(p)
    assert "identification -0.0500 [" in text and "(helps)" in text and "data scarcity 0.0200 [" in text
    assert "The largest part is identification." in text


def test_a_part_straddling_zero_is_no_cause():
    """mixing 0.004 [-0.002, 0.010], scarcity -0.006 [-0.011, -0.001], total straddling 0: only
    scarcity is established (it helps), nothing is called the larger part."""
    p = parts((-0.002, 0.004), scarcity=(-0.006, 0.0024), identification=(0.004, 0.003),
              magnitudes={("scarcity", "identification"): (0.002, 0.004)})
    text = say(p)
    assert "identification" not in text.split("Established")[1]
    assert "It is the only established part" in text and "(helps)" in text
    assert "larger" not in text and "largest part is" not in text


def test_one_seed_intervals_support_no_claim():
    p = parts((0.3, 0.01), covers=ONE_SEED, scarcity=(0.01, 0.001), identification=(0.29, 0.01),
              magnitudes={("scarcity", "identification"): (-0.28, 0.01)})
    text = say(p)
    assert "Not established" in text and "No part is established" in text and "largest" not in text


def test_clearly_separated_parts_name_the_largest():
    p = parts((0.33, 0.005), scarcity=(0.01, 0.001), dilution=(0.02, 0.001), sharing=(-0.01, 0.001),
              identification=(0.31, 0.004),
              magnitudes={("scarcity", "identification"): (-0.30, 0.004), ("dilution", "identification"):
                          (-0.29, 0.004), ("sharing", "identification"): (-0.30, 0.004)})
    claims = k_claims(p)
    assert claims.leader == "identification" and all(t.established for t in claims.parts.values())
    assert len(claims.comparisons) == 3 and all(c.established for c in claims.comparisons)
    assert "The largest part is identification." in sentence(claims, fmt)


def test_the_family_is_holm_adjusted_and_the_table_shows_its_levels():
    """p = 0.03 alone would pass at 95%; in a family of four with three tiny p-values Holm tests it
    at 0.05 / 1 only after the others, so it passes; a second borderline one does not."""
    p = parts((0.1, 0.01), scarcity=(0.05, 0.001), dilution=(0.05, 0.001), sharing=(0.0066, 0.003),
              identification=(0.0068, 0.003), magnitudes={})
    claims = k_claims(p)
    assert claims.parts["sharing"].p < 0.05 and claims.parts["identification"].p < 0.05     # pointwise
    assert not claims.parts["sharing"].established                                          # Holm: no
    table, _ = conclusion_lines(Decomposition("c", [p], {2: ["control", "exposure", "tagged"]}), fmt)
    row = next(line for line in table if line.startswith("| 2 |"))
    sharing = re.findall(r"\+0\.0066 \[([-+][\d.]+), ([-+][\d.]+)\]", row)[0]
    assert float(sharing[0]) < 0 < float(sharing[1])          # at its Holm level the interval holds 0
    assert "Holm level" in "\n".join(table)


def test_the_unseen_sentence_claims_only_what_its_intervals_show():
    """RQ3's sentence: a change across K is claimed only when Holm establishes it over seeds and
    documents; the model is said to stay above the in-context learner only when the gap's
    interval lies above 0."""
    from harness.generalisation import Unseen, UnseenRow
    from harness.report import unseen_sentence

    def unseen(change, p_holm, gap, covers=FULL):
        rows = [UnseenRow(1, 3, interval(6.9, 0.1)),
                UnseenRow(5, 3, interval(5.9, 0.1), change=interval(*change, covers), p_holm=p_holm,
                          gap=interval(*gap))]
        return Unseen(["chain6"], rows, uniform=3.871)
    text = unseen_sentence(unseen((-1.0, 0.1), 0.001, (2.7, 0.2)))
    assert text.startswith("Training on K = 5 components instead of 1 lowers XE") and "stays 2.7000 [" in text
    # a gap whose interval reaches 0: no "stays above"
    text = unseen_sentence(unseen((-1.0, 0.1), 0.001, (0.1, 0.1)))
    assert "stays" not in text and "its gap to the in-context learner is 0.1000 [" in text
    # not significant after Holm, or a one-seed interval: not established, and said why
    assert "is not established" in unseen_sentence(unseen((-1.0, 0.1), 0.2, (2.7, 0.2)))
    text = unseen_sentence(unseen((-1.0, 0.1), 0.001, (2.7, 0.2), covers=ONE_SEED))
    assert "is not established" in text and "its interval is over documents only" in text


def test_one_seed_parts_stay_out_of_the_family_and_its_sentences():
    """The family is the claims that could be made: a one-seed part neither tightens the others'
    Holm step-down nor lets a sentence say that every other interval includes 0."""
    p = parts((0.05, 0.01), scarcity=(0.022, 0.01))                           # p ~ 0.036
    p.parts["dilution"] = interval(0.0213, 0.01, ONE_SEED)                    # p ~ 0.04, one seed
    c = k_claims(p)
    assert c.parts["scarcity"].established and c.parts["scarcity"].p_holm == c.parts["scarcity"].p
    assert math.isnan(c.parts["dilution"].p_holm) and not c.parts["dilution"].established
    text = sentence(c, fmt)
    assert "Not established (compute dilution)" in text and "the others' intervals include 0" not in text
    assert "It is the only established part." in text


def test_the_learner_lines_say_no_ratio_or_bound_their_intervals_do_not_show():
    """Beside the conclusion, the ideal learner's lines: a ratio only of two intervals that exclude
    0 on one side; 'within ln K' only when the whole interval of the Bayes area is."""
    from harness.decomposition import LearnerParts, identification_ratio
    from harness.report import learner_sentence
    assert identification_ratio(interval(0.04, 0.005), interval(0.02, 0.005)) == 2.0
    assert math.isnan(identification_ratio(interval(0.002, 0.01), interval(0.02, 0.005)))     # noise
    assert math.isnan(identification_ratio(interval(-0.04, 0.005), interval(0.02, 0.005)))    # signs differ
    assert math.isnan(identification_ratio(None, interval(0.02, 0.005)))
    d = Decomposition("chain1", [], {2: []}, bayes_area={2: interval(0.69, 0.05)})
    i = LearnerParts(2, "xe_mean", interval(0.01, 0.002), interval(0.02, 0.002), network=interval(0.002, 0.01))
    text = learner_sentence(d, i)
    assert "times the ideal" not in text and "not separated from ln K = 0.693" in text
    d.bayes_area[2] = interval(0.5, 0.05)
    assert "within ln K" in learner_sentence(d, i)


def test_the_size_sentence_names_only_the_parts_holm_establishes():
    """Research question 2's sentence: a part 'smaller for the larger model' at the K values where
    its contrast is established over seeds and documents, and the parts never established named."""
    from harness.claims import size_parts_sentence
    from harness.sizes import PartContrast

    def contrast(k, part, value, p_holm, covers=FULL):
        return PartContrast(k, part, "xs", "s", interval(value, 0.005, covers), p_holm)
    family = [contrast(2, "identification", -0.02, 0.001), contrast(3, "identification", -0.04, 0.01),
              contrast(2, "dilution", -0.01, 0.2), contrast(3, "dilution", 0.03, 0.001),
              contrast(2, "scarcity", -0.05, 0.001, ONE_SEED), contrast(3, "scarcity", 0.0, 1.0)]
    text = size_parts_sentence(family)
    assert "lower for the larger model (signed; Holm over K and parts): identification at K = 2, 3" in text
    assert "higher for it: compute dilution at K = 3" in text
    assert "not established at any K: data scarcity." in text
    assert size_parts_sentence(family[4:]).startswith("no part is established")


def test_one_seed_contrasts_stay_outside_every_holm_family():
    """The size and unseen-component contrasts are adjusted over the tests that can support a
    claim only, as the decomposition's family is; a one-seed test keeps no Holm p."""
    from harness.claims import holm_over_claims
    from harness.stats import holm
    tests = [(interval(0.03, 0.01), 0.02), (interval(0.05, 0.01, ONE_SEED), 0.001), (interval(0.01, 0.01), 0.3)]
    adjusted = holm_over_claims(tests)
    assert math.isnan(adjusted[1]) and [adjusted[0], adjusted[2]] == [float(p) for p in holm([0.02, 0.3])]
    assert holm_over_claims([]) == []


def test_the_conclusion_answers_questions_2_and_3_even_without_a_decomposition():
    """No K = 1 (KS="2 3"): no decomposition, yet the conclusion still says what the size contrasts
    (XE only, without arms) and the unseen components establish."""
    from types import SimpleNamespace
    from harness.generalisation import Unseen, UnseenRow
    from harness.report import conclusion
    from harness.sizes import SizeContrast, Sizes
    sizes = Sizes([], contrasts=[SizeContrast(2, "xs", "s", interval(-0.05, 0.01), 0.001),
                                 SizeContrast(3, "xs", "s", interval(-0.01, 0.01), 0.4)])
    unseen = Unseen(["chain6"], [UnseenRow(2, 3, interval(6.4, 0.1)),
                                 UnseenRow(3, 3, interval(6.3, 0.1), change=interval(-0.1, 0.1), p_holm=0.4)])
    s = SimpleNamespace(analysis=SimpleNamespace(decomposition=None), sizes=sizes, unseen=unseen)
    text = "\n".join(conclusion(s))
    assert "No decomposition" in text
    assert "- Model size (research question 2), s against xs: the larger model's XE is lower at K = 2 " \
           "(Holm" in text
    assert "- Unseen components (research question 3): Whether more training components help" in text
