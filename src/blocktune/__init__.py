"""blocktune: block-wise fine-tuning of pretrained networks on small data.

Subpackages by concern, each importing only those below it: :mod:`.core` (vocabulary),
:mod:`.data` and :mod:`.loggers`, :mod:`.models`, :mod:`.training`, :mod:`.executors`,
:mod:`.protocol`, :mod:`.results`, :mod:`.runner`; :mod:`.api` and :mod:`.cli` on top. Importing
the package registers every built-in strategy, selection rule and executor.
"""

from blocktune.core import __version__
from blocktune.core.errors import BlocktuneError
from blocktune.executors import EXECUTORS as _EXECUTORS  # noqa: F401 - registers local, ray
from blocktune.models import groups as _groups  # noqa: F401 - registers the strategies
from blocktune.protocol import select as _select  # noqa: F401 - registers the rules

__all__ = ["BlocktuneError", "__version__"]
