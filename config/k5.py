# arXiv experiment, K = 5: the first 5 categories of the default order (prepare.py's top five
# by train tokens, smallest first), budget/5 tokens each. Combine with a size config:
#   python train.py config/k5.py config/small.py --seed=2
k = 5
