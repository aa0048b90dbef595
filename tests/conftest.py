import os

# Keep every test on a predictable, small thread budget (CI has 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "2")
