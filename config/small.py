# Model size "small", the default: 6 layers, 384 wide; 10.6M non-embedding + 19.3M tied embedding
# parameters, ~19 training tokens per non-embedding parameter (README, "Model sizes"). Its
# dimensions are train.py's defaults (n_layer = 6, n_head = 6, n_embd = 384), written once there.
size = "small"
