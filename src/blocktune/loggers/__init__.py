"""Callbacks that report a run's progress as it happens, as Lightning's loggers do: the terminal
progress bar and phase lines (:mod:`.progress`) and one TensorBoard run per candidate and per
final (:mod:`.tensorboard`). They hear the driver's events and never change a result."""
