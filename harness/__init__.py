"""
The harness's shared library, below the scripts a researcher runs (prepare, train, evaluate, plot,
bench): the dataset format and window arithmetic (data), what a run trains on (mixture), run
folders, identity and locks (runs), the exact references on synthetic data (references), the
statistics (stats), the analysis of a set of runs (analysis) and the report's text (report).
"""
