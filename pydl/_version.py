"""pydl's version, in a module of its own: the build cache key (pydl/_build.py) needs it without importing the
package, and setuptools reads it from here without running any code (pyproject.toml)."""

__version__ = "0.1.0"
