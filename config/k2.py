# arXiv experiment, K = 2: the first 2 categories of the default order (prepare.py's top five
# by train tokens, smallest first), budget/2 tokens each. Combine with a size config:
#   python train.py config/k2.py config/small.py --seed=2
k = 2
