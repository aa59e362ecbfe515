"""Plan a recipe before a cluster job: parameters, per-rank memory under ZeRO, activations, FLOPs and time.

`python -m internvl_train.plan <the run's overrides> [plan.gpus=N plan.gpu_mem_gb=80 plan.peak_tflops=989
plan.mfu=0.4]` builds the recipe's model on the meta device (no GPU, no weights, no data), applies the stage's
own freeze policy and prints a table (docs/performance.md, "Planner", has the formulas).
"""
