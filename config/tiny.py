# Model size "tiny": 4 layers, 256 wide; 3.1M non-embedding + 12.9M tied embedding parameters.
# The data-rich end of the size sweep (README, "Model sizes"): ~64 training tokens per
# non-embedding parameter at the default ~50M-token budget x 4 epochs.
size = "tiny"
n_layer = 4
n_head = 4
n_embd = 256
