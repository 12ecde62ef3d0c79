"""Package discovery: every package under `proxy/`, found automatically, and the top-level
`migrations/` shipped inside it as `proxy.migrations` (metadata is in pyproject.toml)."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["proxy", "proxy.*"]), "proxy.migrations"],
    package_dir={"proxy.migrations": "migrations"},
)
