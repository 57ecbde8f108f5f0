#!/usr/bin/env python3
"""Generate math question/answer pairs with DeepMind's mathematics_dataset.

Runs INSIDE the pinned virtual environment that scripts/data/build.py creates
(mathematics-dataset==1.0.1, sympy==1.4, numpy==1.23.5, ...); it is never
imported by build.py itself.

mathematics_dataset's own generate.py draws from the global, unseeded `random`
and `numpy.random` generators.  For reproducibility this driver seeds both
generators separately for every (seed, regime, module) triple, from a SHA-256 of
that triple, so the output does not depend on how modules are spread over worker
processes (each job also runs in its own freshly forked child).  Run it with PYTHONHASHSEED=0 (build.py does).

Output: one JSON object per line, sorted by (regime, module, index):
  {"id": "s<seed>/<regime>/<module>/<index>", "regime": ..., "module": ...,
   "question": ..., "answer": ...}
"""
import argparse
import hashlib
import json
import multiprocessing
import random
import sys


def _modules(regime):
    from mathematics_dataset import generate
    from mathematics_dataset.modules import modules

    make = generate._make_entropy_fn  # pylint: disable=protected-access
    if regime == "train-easy":
        tree = modules.train(make(0, 3))
    elif regime == "train-medium":
        tree = modules.train(make(1, 3))
    elif regime == "train-hard":
        tree = modules.train(make(2, 3))
    elif regime == "interpolate":
        tree = modules.test()
    elif regime == "extrapolate":
        tree = modules.test_extra()
    else:
        raise SystemExit("unknown regime %r" % regime)
    flat = {}

    def add(sub, prefix=None):
        for key, val in sub.items():
            name = prefix + "__" + key if prefix is not None else key
            if isinstance(val, dict):
                add(val, name)
            else:
                flat[name] = val

    add(tree)
    return flat


def _sample(module):
    # Same rejection rule as mathematics_dataset.generate.sample_from_module.
    from mathematics_dataset import generate_settings

    while True:
        problem = module()
        question = str(problem.question)
        if len(question) > generate_settings.MAX_QUESTION_LENGTH:
            continue
        answer = str(problem.answer)
        if len(answer) > generate_settings.MAX_ANSWER_LENGTH:
            continue
        return question, answer


def _make_entities_hash_deterministic():
    """Give composition.Entity a creation-order hash instead of an address hash.

    mathematics_dataset.util.composition.expand_entities() puts Entity objects
    (which hash by memory address) into a set, turns the set into a list and
    shuffles it: the order before the shuffle, and so the generated question,
    depended on memory layout.  With a hash equal to a per-job creation serial
    number the set order depends only on the seeded generation itself.
    Equality stays identity, so hash/eq consistency is kept.
    """
    import itertools
    from mathematics_dataset.util import composition

    if getattr(composition.Entity, "_demix_patched", False):
        composition.Entity._demix_counter = itertools.count()
        return
    original_init = composition.Entity.__init__

    def __init__(self, *args, **kwargs):
        self._demix_serial = next(composition.Entity._demix_counter)
        original_init(self, *args, **kwargs)

    composition.Entity.__init__ = __init__
    composition.Entity.__hash__ = lambda self: self._demix_serial
    composition.Entity._demix_counter = itertools.count()
    composition.Entity._demix_patched = True


def _job(args):
    seed, regime, name, count = args
    import numpy as np

    _make_entities_hash_deterministic()

    digest = hashlib.sha256(("%d/%s/%s" % (seed, regime, name)).encode()).digest()
    random.seed(int.from_bytes(digest[:8], "big"))
    np.random.seed(int.from_bytes(digest[8:12], "big"))
    module = _modules(regime)[name]
    rows = []
    for i in range(count):
        question, answer = _sample(module)
        rows.append({
            "id": "s%d/%s/%s/%05d" % (seed, regime, name, i),
            "regime": regime,
            "module": name,
            "question": question,
            "answer": answer,
        })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--regimes", required=True, help="comma-separated")
    ap.add_argument("--per-module", type=int, required=True)
    ap.add_argument("--filter", default="", help="substring of module names")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    jobs = []
    for regime in args.regimes.split(","):
        for name in sorted(_modules(regime)):
            if args.filter in name:
                jobs.append((args.seed, regime, name, args.per_module))
    # Every job runs in a fresh child forked from this (identical) parent state:
    # some composed modules keep process-global state (caches), so running jobs
    # one after another in one process would make the output depend on the order
    # and on the number of workers.
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(max(1, args.jobs), maxtasksperchild=1) as pool:
        results = pool.map(_job, jobs, chunksize=1)
    with open(args.out, "w", encoding="utf-8") as f:
        for rows in results:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    print("math_gen: %d modules, %d items -> %s"
          % (len(jobs), sum(len(r) for r in results), args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
