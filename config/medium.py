# Model size "medium": 8 layers, 512 wide (25.2M non-embedding + 25.7M embedding).
# Bigger than the budget supports well (about 4 tokens per parameter): the size-scaling control.
n_layer = 8
n_head = 8
n_embd = 512
