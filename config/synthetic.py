# Synthetic ergodic components on CPU: `python prepare.py --source=synthetic` first.
# A 2-layer, 64-wide GPT (0.1M parameters) that learns one chain to within about 1% of its
# entropy rate; K = 1..5 from --k. About a minute per run on one core at the default budget
# (the 300k train tokens of a chain, 4 epochs). Many small steps learn these chains faster
# than few large ones: see README, "Synthetic demo".
data_dir = "data/synthetic"
device = "cpu"
cpu_threads = 1     # tiny models run fastest on one thread; the sweep trains runs side by side
n_layer = 2
n_head = 4
n_embd = 64
batch_size = 16
learning_rate = 4e-3
min_lr = 4e-4
warmup_iters = 30
log_interval = 50
eval_interval = 250
ckpt_interval = 100
val_windows = 100
