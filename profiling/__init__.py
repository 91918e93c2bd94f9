"""fused-rnn's benchmark suite.

    python -m profiling [--quick] [--cells lstm,gru] [--dtypes bf16,fp16,fp32] ...   (make bench)
    python -m profiling.plot [records...] [--out DIR]                                 (make plots)

Modules: bench (the CLI and the grid runner), impls (what is timed and the float64 oracle),
timing (do_bench / CPU timer, peak memory), floor (the floor model and the grid-barrier probe),
report (environment facts, the JSON record, the markdown table), plot (PNG plots from records).
"""
