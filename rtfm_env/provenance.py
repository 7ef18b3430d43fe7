"""Where a result was measured: the machine description stored beside every benchmark and evaluation."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

__all__ = ["machine_info"]


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, library versions, torch threads and device, and the current load.

    The 1-minute load average is recorded because other jobs on the machine inflate timings.
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_1min": os.getloadavg()[0],
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info
