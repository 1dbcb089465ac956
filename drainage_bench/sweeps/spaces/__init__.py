"""Search spaces for `drainage-bench tune`: ``default.toml`` holds one table per loss.

Each value is a distribution in the syntax of ``--space`` (``loguniform:LOW:HIGH``,
``uniform:LOW:HIGH``, ``choice:A,B,...``); `drainage_bench.sweeps.search.load_space` reads it.
"""
