# The synthetic demo's small end of a size sweep (research question 2), after config/synthetic.py:
#   SIZES="synthetic_xs synthetic" bash sweep.sh synthetic
# 2 layers, 24 wide: ~15k non-embedding parameters against the demo model's ~103k (6.6x fewer),
# with the same data, budget, epochs and schedule, so only the network's capacity differs.
size = "synthetic_xs"
n_layer = 2
n_head = 4
n_embd = 24
