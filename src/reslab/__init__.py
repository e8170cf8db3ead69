"""reslab: Deep Residual Learning for Image Recognition (He et al., 2015), built exactly."""

from reslab.errors import ReslabError
from reslab.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["ReslabError", "__version__", "create_model", "list_models", "load_weights"]


def __getattr__(name: str):
    # Lazy: interop pulls in safetensors; keep `import reslab` light.
    if name == "load_weights":
        from reslab.interop import load_weights

        return load_weights
    raise AttributeError(f"module 'reslab' has no attribute {name!r}")
