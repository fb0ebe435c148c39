"""plugin: modules given with ``--import`` (in the command's cwd) that fail in every way a plugin
can: at import, in what they register, in their factories, methods, tasks and datasets."""

from __future__ import annotations

import textwrap
from pathlib import Path

from _util import SYNTH_TRAIN, Case, write

C = "plugin"
TRAIN = [*SYNTH_TRAIN, "--out", "R", "--import", "plug"]
LIST = ["list", "--import", "plug"]

#: A dataset "synthbad" wrapping the synthetic scenes with the depth target renamed "bad", so
#: that a plugin task "bad" (a Depth with one method broken) trains on real targets.
DATASET_WRAP = """
from densemtl import data, tasks
from densemtl.tasks.depth import Depth


class Wrapped:
    def __init__(self, inner, rename=("depth", "bad")):
        self.inner, self.rename = inner, rename
        self.tasks = tuple(rename[1] if t == rename[0] else t for t in inner.tasks)
        self.num_classes, self.size = inner.num_classes, inner.size

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        s = dict(self.inner[i])
        s[self.rename[1]] = s.pop(self.rename[0])
        return s

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)


@data.register("synthbad")
def synthbad(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
    return Wrapped(data.create("synthetic", split, size=size, augment=augment, seed=seed, n=n))
"""


def plug(source: str, name: str = "plug.py"):
    def setup(tmp: Path) -> None:
        write(tmp / name, textwrap.dedent(source).lstrip())

    return setup


def task_plug(body: str) -> str:
    return (
        DATASET_WRAP
        + "\n\n@tasks.register('bad')\nclass Bad(Depth):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )


ARCH_HEAD = (
    "import torch\nfrom torch import nn\nfrom densemtl import models\nfrom densemtl.models.segnet import segnet\n"
)
METHOD_HEAD = (
    "import torch\nfrom densemtl import methods\nfrom densemtl.balancing.base import LossWeighting, Requirements\n"
)


def arch(body: str) -> str:
    return ARCH_HEAD + textwrap.dedent(body)


def method(body: str) -> str:
    return METHOD_HEAD + textwrap.dedent(body)


def t_arch(name: str, source: str, expect: str = "refuse", note: str = "") -> Case:
    return Case(name, C, [*TRAIN, "--arch", "p"], expect, plug(source), note=note)


def t_method(name: str, source: str, expect: str = "refuse", note: str = "") -> Case:
    return Case(
        name,
        C,
        [*TRAIN, "--method", "p", "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"],
        expect,
        plug(source),
        note=note,
    )


def t_task(name: str, body: str, expect: str = "refuse", note: str = "") -> Case:
    argv = [*TRAIN, "--dataset", "synthbad", "--arch-arg", "width=0.125", "--arch-arg", "depth_stages=3"]
    return Case(name, C, argv, expect, plug(task_plug(body)), note=note)


SEGNET_OK = (
    "@models.register('p')\ndef p(task_channels, width=0.125, depth_stages=3):\n"
    "    return segnet(task_channels, width, depth_stages)\n"
)


def cases() -> list[Case]:
    import_cases = [
        Case("import-syntax-error", C, LIST, "refuse", plug("def broken(:\n")),
        Case("import-raises-keyerror", C, LIST, "refuse", plug("raise KeyError('x')\n")),
        Case(
            "import-raises-multiline",
            C,
            LIST,
            "refuse",
            plug("raise RuntimeError('line one\\nline two')\n"),
            note="the plugin's message has two lines",
        ),
        Case(
            "import-keyboardinterrupt",
            C,
            LIST,
            "refuse",
            plug("raise KeyboardInterrupt\n"),
            note="arguable: an interrupt raised by import, not by the user",
        ),
        Case(
            "import-sys-exit-0",
            C,
            LIST,
            "refuse",
            plug("import sys\nsys.exit(0)\n"),
            note="the process ends with status 0 and no output: the list never printed",
        ),
        Case("import-recursion", C, LIST, "refuse", plug("def f(n):\n    return f(n + 1)\nf(0)\n")),
        Case("import-prints-stderr", C, LIST, "accept", plug("import sys\nprint('hello', file=sys.stderr)\n")),
        Case("import-stdlib-os", C, ["list", "--import", "os"], "accept"),
        Case("import-empty-name", C, ["list", "--import", ""], "refuse"),
        Case("import-trailing-dot", C, ["list", "--import", "plug."], "refuse", plug("x = 1\n")),
        Case("import-unicode-name", C, ["list", "--import", "plügin"], "accept", plug("x = 1\n", "plügin.py")),
        Case(
            "import-package-init-raises",
            C,
            ["list", "--import", "pkg.mod"],
            "refuse",
            lambda t: (plug("raise ImportError('inner')\n", "pkg/__init__.py")(t), plug("x=1\n", "pkg/mod.py")(t)),
        ),
        Case(
            "import-shadows-densemtl",
            C,
            ["list", "--import", "torch_fake"],
            "refuse",
            plug(
                "import densemtl.models\ndensemtl.models.MODELS = None\nraise RuntimeError('sabotage')\n",
                "torch_fake.py",
            ),
        ),
    ]
    register_cases = [
        Case(
            "register-empty-name",
            C,
            LIST,
            "refuse",
            plug(arch("@models.register('')\ndef f(task_channels):\n    return segnet(task_channels)\n")),
        ),
        Case(
            "register-int-name",
            C,
            LIST,
            "refuse",
            plug(arch("@models.register(7)\ndef f(task_channels):\n    return segnet(task_channels)\n")),
        ),
        Case(
            "register-method-EW-upper",
            C,
            LIST,
            "refuse",
            plug(
                method(
                    "@methods.register('EW')\nclass M(LossWeighting):\n"
                    "    requirements = Requirements(sources=('losses',))\n"
                    "    def weights(self, losses):\n        return torch.ones_like(losses)\n"
                )
            ),
        ),
        Case(
            "register-task-seg-again",
            C,
            LIST,
            "refuse",
            plug(
                "from densemtl import tasks\nfrom densemtl.tasks.depth import Depth\n"
                "@tasks.register('seg')\nclass S(Depth):\n    pass\n"
            ),
        ),
        Case(
            "register-name-with-comma",
            C,
            LIST,
            "refuse",
            plug(arch("@models.register('a,b')\ndef f(task_channels):\n    return segnet(task_channels)\n")),
            note="'a,b' can never be named in --archs",
        ),
        Case(
            "register-unicode-name",
            C,
            [*TRAIN, "--arch", "сеть"],
            "accept",
            plug(
                arch(
                    "@models.register('сеть')\ndef f(task_channels, width=0.125, depth_stages=3):\n"
                    "    return segnet(task_channels, width, depth_stages)\n"
                )
            ),
        ),
        Case(
            "register-dataset-not-callable",
            C,
            LIST,
            "refuse",
            plug("from densemtl import data\ndata.register('x')(42)\n"),
        ),
    ]
    arch_cases = [
        t_arch("factory-no-task-channels", arch("@models.register('p')\ndef p():\n    return segnet({'seg': 7})\n")),
        t_arch("factory-positional-only", arch("@models.register('p')\ndef p(tc, /):\n    return segnet(tc)\n")),
        t_arch(
            "factory-returns-plain-module",
            arch("@models.register('p')\ndef p(task_channels):\n    return nn.Conv2d(3, 3, 1)\n"),
        ),
        t_arch(
            "forward-returns-tensor",
            arch(SEGNET_OK.replace("return segnet", "m = segnet") + "    m.forward = lambda x: x\n    return m\n"),
        ),
        t_arch(
            "forward-missing-task",
            arch(
                "class M(nn.Module):\n    pass\n"
                "@models.register('p')\ndef p(task_channels, width=0.125, depth_stages=3):\n"
                "    m = segnet(task_channels, width, depth_stages)\n    f = m.forward\n"
                "    m.forward = lambda x: {k: v for k, v in f(x).items() if k != 'depth'}\n    return m\n"
            ),
        ),
        t_arch(
            "forward-wrong-size",
            arch(
                "import torch.nn.functional as F\n"
                "@models.register('p')\ndef p(task_channels, width=0.125, depth_stages=3):\n"
                "    m = segnet(task_channels, width, depth_stages)\n    f = m.forward\n"
                "    m.forward = lambda x: {k: F.interpolate(v, scale_factor=0.5) for k, v in f(x).items()}\n"
                "    return m\n"
            ),
            note="predictions at half the target's size",
        ),
        t_arch(
            "forward-wrong-channels",
            arch(
                "@models.register('p')\ndef p(task_channels, width=0.125, depth_stages=3):\n"
                "    return segnet({**task_channels, 'seg': 2}, width, depth_stages)\n"
            ),
            note="2 seg channels for 7 classes",
        ),
        t_arch(
            "no-parameters",
            arch(
                "from densemtl.models.base import MultiTaskModel\n"
                "class Z(MultiTaskModel):\n    has_representation = False\n"
                "    def forward(self, x):\n"
                "        return {t: x.new_zeros(x.shape[0], c, *x.shape[-2:]) for t, c in self.task_channels.items()}\n"
                "@models.register('p')\ndef p(task_channels):\n    return Z(task_channels)\n"
            ),
        ),
        t_arch(
            "factory-kwargs-only",
            arch("@models.register('p')\ndef p(**kw):\n    return segnet(**kw)\n"),
            "accept",
            note="arguable: a **kwargs factory",
        ),
    ]
    method_cases = [
        t_method(
            "weights-wrong-length",
            method(
                "@methods.register('p')\nclass M(LossWeighting):\n"
                "    requirements = Requirements(sources=('losses',))\n"
                "    def weights(self, losses):\n        return torch.ones(len(losses) + 1)\n"
            ),
        ),
        t_method(
            "weights-nan",
            method(
                "@methods.register('p')\nclass M(LossWeighting):\n"
                "    requirements = Requirements(sources=('losses',))\n"
                "    def weights(self, losses):\n        return torch.full_like(losses, float('nan'))\n"
            ),
        ),
        t_method(
            "weights-returns-list",
            method(
                "@methods.register('p')\nclass M(LossWeighting):\n"
                "    requirements = Requirements(sources=('losses',))\n"
                "    def weights(self, losses):\n        return [1.0] * len(losses)\n"
            ),
        ),
        t_method(
            "no-requirements",
            method(
                "@methods.register('p')\nclass M:\n"
                "    def weights(self, losses):\n        return torch.ones_like(losses)\n"
            ),
        ),
        t_method("method-is-function", method("@methods.register('p')\ndef p():\n    return 3\n")),
        t_method(
            "requirements-unknown-source",
            method(
                "@methods.register('p')\nclass M(LossWeighting):\n"
                "    requirements = Requirements(sources=('telepathy',))\n"
                "    def weights(self, losses):\n        return torch.ones_like(losses)\n"
            ),
        ),
        t_method(
            "init-requires-arg",
            method(
                "@methods.register('p')\nclass M(LossWeighting):\n"
                "    requirements = Requirements(sources=('losses',))\n"
                "    def __init__(self, must):\n        super().__init__()\n"
                "    def weights(self, losses):\n        return torch.ones_like(losses)\n"
            ),
        ),
    ]
    task_cases = [
        t_task("loss-vector", "def loss(self, pred, target):\n    return (pred - target).abs().mean(dim=(1, 2, 3))\n"),
        t_task("loss-nan", "def loss(self, pred, target):\n    return (pred - target).abs().mean() * float('nan')\n"),
        t_task("loss-python-float", "def loss(self, pred, target):\n    return 1.0\n"),
        t_task("channels-zero", "def channels(self, num_classes):\n    return 0\n"),
        t_task("channels-str", "def channels(self, num_classes):\n    return 'one'\n"),
        t_task("metric-direction-missing", "lower_is_better = {}\n", note="primary metric without a direction"),
        t_task("accumulator-returns-none", "def accumulator(self, num_classes):\n    return None\n"),
    ]
    ds = DATASET_WRAP.replace('@data.register("synthbad")', "@data.register('unused')")
    dataset_cases = [
        Case(
            "dataset-len-zero",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                ds
                + textwrap.dedent("""
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                w = Wrapped(data.create('synthetic', split, size=size, n=2), ('depth', 'depth'))
                w.__class__.__len__ = lambda self: 0
                return w
            """)
            ),
        ),
        Case(
            "dataset-no-image",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                ds
                + textwrap.dedent("""
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                return Wrapped(data.create('synthetic', split, size=size, n=2), ('image', 'picture'))
            """)
            ),
        ),
        Case(
            "dataset-num-classes-zero",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                ds
                + textwrap.dedent("""
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                w = Wrapped(data.create('synthetic', split, size=size, n=2), ('depth', 'depth'))
                w.num_classes = 0
                return w
            """)
            ),
        ),
        Case(
            "dataset-factory-raises",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                textwrap.dedent("""
            from densemtl import data
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                raise FileNotFoundError('/data/secret/missing.h5')
            """)
            ),
        ),
        Case(
            "dataset-getitem-raises",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                ds
                + textwrap.dedent("""
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                w = Wrapped(data.create('synthetic', split, size=size, n=2), ('depth', 'depth'))
                def boom(self, i):
                    raise IndexError(i)
                w.__class__.__getitem__ = boom
                return w
            """)
            ),
        ),
        Case(
            "dataset-tasks-unknown",
            C,
            [*TRAIN, "--dataset", "pz"],
            "refuse",
            plug(
                ds
                + textwrap.dedent("""
            @data.register('pz')
            def pz(split, root=None, size=None, augment=False, seed=0, n=None, num_classes=None):
                return Wrapped(data.create('synthetic', split, size=size, n=2), ('depth', 'height'))
            """)
            ),
        ),
    ]
    return [*import_cases, *register_cases, *arch_cases, *method_cases, *task_cases, *dataset_cases]
