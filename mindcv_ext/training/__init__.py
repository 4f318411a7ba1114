"""Building blocks of train.py: config parsing, runtime setup, loaders, the compiled train step, EMA,
checkpoint management, evaluation, metrics and console output."""
