"""Registries are strict, and third-party plugins register through entry points."""
import subprocess
import sys
import textwrap

import pytest

from ssl_bench.registry import Registry, RegistryError, list_methods, register_method


def test_duplicate_name_is_an_error():
    reg = Registry("thing", "ssl_bench", "ssl_bench.none")

    @reg.register("a", description="first")
    class A:  # noqa: F841
        pass

    with pytest.raises(RegistryError, match="already registered"):
        @reg.register("a")
        class B:  # noqa: F841
            pass


def test_builtin_method_name_cannot_be_reused():
    list_methods()
    with pytest.raises(RegistryError, match="'mt' is already registered"):
        register_method("mt")(type("Other", (), {}))


def test_unknown_name_lists_known():
    reg = Registry("thing", "ssl_bench", "ssl_bench.none")
    reg.register("known")(type("K", (), {}))
    with pytest.raises(RegistryError, match="unknown thing 'nope'; known: known"):
        reg.get("nope")


PLUGIN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "ssl-bench-toy-plugin"
        version = "0.0.1"
        [project.entry-points."ssl_bench.methods"]
        toy = "toy_plugin"
        [tool.setuptools]
        py-modules = ["toy_plugin"]
    """,
    "toy_plugin.py": '''
        """A third-party method: MT's consistency on the strong view, to prove the plugin path."""
        from ssl_bench.losses import softmax_mse, supervised_loss
        from ssl_bench.methods.base import Method, StepOutput
        from ssl_bench.registry import register_method

        @register_method("toy-plugin", description="toy third-party method", paper="nobody, 2026")
        class Toy(Method):
            def __init__(self, cfg, ctx):
                super().__init__(cfg, ctx)
                self.student = ctx.make_backbone()

            def modules(self):
                return {"student": self.student}

            def training_step(self, batch, step):
                sup = supervised_loss(self.student(batch.x_lb), batch.y_lb)
                unsup = softmax_mse(self.student(batch.x_ulb_strong), self.student(batch.x_ulb).detach())
                return StepOutput(loss=sup + unsup, unsup=unsup)
    ''',
}


@pytest.mark.slow
def test_entry_point_plugin_is_discovered(tmp_path):
    src = tmp_path / "plugin"
    src.mkdir()
    for name, text in PLUGIN.items():
        (src / name).write_text(textwrap.dedent(text))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True)
    code = textwrap.dedent("""
        from ssl_bench.registry import list_methods
        from ssl_bench.testing import run_contract
        assert "toy-plugin" in list_methods(), list_methods()
        rep = run_contract("toy-plugin")[0]
        assert not rep["missing"] and rep["unsup_grad"] > 0
        print("plugin ok")
    """)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    import os
    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "plugin ok" in out.stdout
    cli = subprocess.run([sys.executable, "-m", "ssl_bench.cli", "methods"], env=env, capture_output=True,
                         text=True, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    assert "toy-plugin" in cli.stdout and "toy third-party method" in cli.stdout
