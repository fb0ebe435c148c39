"""A conformance kit for plugin authors: the checks densemtl's own registry-wide suites run.

Run it on your architecture, method, task or dataset (a registered name, the factory or class, or
an object), e.g. in your own test suite::

    import densemtl.testing

    def test_my_plugin_conforms():
        densemtl.testing.check_architecture("myarch", knobs={"width": 8})
        densemtl.testing.check_method("mymethod")
        densemtl.testing.check_task("mytask", target=my_target)  # a (B, ..., H, W) target batch
        densemtl.testing.check_dataset("mydata", knobs={"n": 2})

Each ``check_*`` raises :class:`ConformanceError` (an ``AssertionError``, so pytest shows it as a
failed check) whose one-line message names the object and what it got wrong, and returns None
when everything holds. densemtl's tests run the same functions over every built-in
(``tests/test_models.py``, ``tests/test_testing.py``), so a plugin is held to what the built-ins are.
Checks that need a model build small ones on the CPU; nothing is downloaded or written.
"""

from __future__ import annotations

from densemtl.testing._common import ConformanceError, dense_batch
from densemtl.testing.architectures import check_architecture
from densemtl.testing.data import check_dataset, check_task
from densemtl.testing.methods import check_method

__all__ = [
    "ConformanceError",
    "check_architecture",
    "check_dataset",
    "check_method",
    "check_task",
    "dense_batch",
]
