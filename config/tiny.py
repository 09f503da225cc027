# Model size "tiny": 4 layers, 256 wide (3.2M non-embedding + 12.9M tied embedding parameters).
# About 25 training tokens per parameter at the default 50M-token budget x 4 epochs.
n_layer = 4
n_head = 4
n_embd = 256
