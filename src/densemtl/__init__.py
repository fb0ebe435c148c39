"""densemtl: multi-task learning for dense scene understanding.

One network predicts semantic segmentation, depth and surface normals; densemtl provides the
data, architectures, task-balancing methods, training loop and benchmarks around it.
The pipeline is data -> models -> tasks (losses) -> balancing -> training -> report.
"""

from densemtl.errors import DenseMTLError

__version__ = "0.1.0"
__all__ = ["DenseMTLError", "__version__"]
