"""reslab: Deep Residual Learning for Image Recognition (He et al., 2015), built exactly."""

__version__ = "0.1.0"

from reslab.errors import ReslabError  # noqa: E402  (after __version__, which engine reads)
from reslab.interop import load_weights  # noqa: E402
from reslab.models import create_model, list_models  # noqa: E402

__all__ = ["ReslabError", "__version__", "create_model", "list_models", "load_weights"]
