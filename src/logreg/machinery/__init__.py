"""What makes a run safe and fast without changing what it computes: checkpoints and atomic writes, signals,
the default callbacks, the TensorBoard logger, errors and silenced messages. A user never has to open it."""
