"""The wheel ships the presets, notebooks and docs inside the package (`stlib/_data/`), so an
installed stlib finds `params/`, runs its notebooks and draws its docs outside the repository
(`stlib.paths`). Everything else is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("params", "notebooks", "docs")


class BuildWithData(build_py):
    def run(self):
        super().run()
        if self.editable_mode:   # an editable install reads the repository's own folders
            return
        for name in SHIPPED:
            dest = Path(self.build_lib) / "stlib" / "_data" / name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(name, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))


setup(cmdclass={"build_py": BuildWithData})
