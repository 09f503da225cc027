# arXiv experiment, K = 4: the first 4 categories of the default order (prepare.py's top five
# by train tokens, smallest first), budget/4 tokens each. Combine with a size config:
#   python train.py config/k4.py config/small.py --seed=2
k = 4
