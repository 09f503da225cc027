# arXiv experiment, K = 3: the first 3 categories of the default order (prepare.py's top five
# by train tokens, smallest first), budget/3 tokens each. Combine with a size config:
#   python train.py config/k3.py config/small.py --seed=2
k = 3
