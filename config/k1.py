# arXiv experiment, K = 1: the first 1 categories of the default order (prepare.py's top five
# by train tokens, smallest first), budget/1 tokens each. Combine with a size config:
#   python train.py config/k1.py config/small.py --seed=2
k = 1
