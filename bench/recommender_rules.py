"""What a catalog's business rules cost per request: `RuleSet.apply` (the boosts, caps and
pins of ADR 0042) over the pool the model is asked for, in process.

Ten rules: six boosts and buries on one attribute, a cap of two per brand, two pins and an
exclusion (exclusions act in the model's filters, not here); 5,000 items over seven brands.
For each page size, the pool is what the engine asks the model for (4 x count + the largest
boost) and the figure is the mean time of one `apply`, beside the page size's share of a
Recommend (ADR 0034: a top 10 answers in about 2.5-3.5 ms p50 through gRPC on 2 cores).

Usage: python bench/recommender_rules.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import timeit

from nexus.recommender.recommending import (
    Boost,
    Cap,
    Exclude,
    Match,
    Pin,
    Ranked,
    Rule,
    RuleSet,
    Why,
)


def rules() -> RuleSet:
    """Ten rules of every kind."""
    boosts = [Rule(f"b{k}", Boost(Match("brand", frozenset({f"b{k}"})), 5 - k)) for k in range(6)]
    others = [
        Rule("cap", Cap("brand", 2)),
        Rule("pin", Pin("i4999", 1)),
        Rule("pin2", Pin("i3", 5)),
        Rule("ex", Exclude(Match("stock", frozenset({"0"})))),
    ]
    return RuleSet(tuple(boosts + others))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    items = {f"i{k}": {"brand": f"b{k % 7}", "stock": str(k % 13)} for k in range(5000)}
    ruleset = rules()
    print("| items asked for | pool | apply, mean |")
    print("|---|---|---|")
    for count in (10, 100):
        pool = ruleset.pool(count)
        ranked = [Ranked(f"i{k}", 1.0 - k / pool, Why.POPULAR) for k in range(pool)]
        repeat = max(1, args.repeat * 10 // count)
        seconds = timeit.timeit(
            lambda r=ranked, c=count: ruleset.apply(r, c, items.get, lambda _: True),  # type: ignore[misc]
            number=repeat,
        )
        print(f"| {count} | {pool} | {seconds / repeat * 1e6:.0f} us |")


if __name__ == "__main__":
    main()
