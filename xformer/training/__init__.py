"""What a training run is made of: the `Run` a config builds (model, mesh, jitted steps), the pure
train and eval steps, the loss, the optimiser and its schedule, fault injection for tests, and
profiling. The loop that drives them is xformer/train.py."""
