"""
The harness's shared library, below the scripts a researcher runs (prepare, train, evaluate, plot,
bench): the dataset format and window arithmetic (data), what a run trains on (mixture), run
folders, identity and locks (runs), the exact references on synthetic data (references), the
statistics (stats) and fitted laws (laws), which runs make an experiment (experiments), the
analysis of one (analysis), the K effect cause by cause (decomposition) and what it establishes
(claims), model sizes (sizes) and unseen components (generalisation), the report's text (report),
and for bench.py: coverage by simulation (simulation), a sweep's cost (cost), the measurements'
pieces (benchkit).
"""
