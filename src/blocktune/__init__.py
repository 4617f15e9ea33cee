"""blocktune: block-wise fine-tuning of pretrained networks on small data."""

__version__ = "0.1.0"

from blocktune.errors import BlocktuneError  # noqa: E402

__all__ = ["BlocktuneError", "__version__"]
