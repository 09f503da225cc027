# Model size "medium": 8 layers, 512 wide; 25.2M non-embedding + 25.8M tied embedding parameters.
# The data-starved end of the size sweep: ~8 training tokens per non-embedding parameter.
size = "medium"
n_layer = 8
n_head = 8
n_embd = 512
