"""The cases of tests/data/make_torch_schedules.py and tests/test_torch_schedules.py (plain
data, no torch, no fastnet): gradient shapes and norm types for clipping, the schedules'
configurations and the metric sequence ReduceLROnPlateau is stepped with."""
import math

import numpy as np

CLIP_SHAPES = [(3, 4), (5,), (2, 2, 3)]
NORM_TYPES = [2.0, 1.0, math.inf, 3.0, 0.5]
ONECYCLE = [dict(max_lr=0.1, total_steps=30),
            dict(max_lr=1.0, total_steps=25, pct_start=0.25, anneal_strategy="linear"),
            dict(max_lr=0.5, total_steps=40, three_phase=True, div_factor=10,
                 final_div_factor=100)]
WARMUP = [dict(warmup_steps=5, total_steps=30, min_lr=0.0),
          dict(warmup_steps=3, total_steps=12, min_lr=0.01),
          dict(warmup_steps=0, total_steps=10, min_lr=0.001)]
PLATEAU = [dict(),
           dict(mode="max", factor=0.5, patience=2, threshold=0.01, threshold_mode="abs"),
           dict(factor=0.3, patience=1, cooldown=2, min_lr=0.004),
           dict(factor=0.5, patience=0, eps=0.02)]
METRICS = np.array([1.0, 0.9, 0.9, 0.95, 0.8999, 0.85, 0.86, 0.86, 0.87, 0.84, 0.84, 0.84,
                    np.nan, 0.83, 0.9, 0.9, 0.9, 0.7, 0.7, 0.71])
