"""Test set-up shared by all of ``tests/``: the fixtures in ``tests/support/fixtures.py``.

``tests.support`` is importable because ``pyproject.toml`` puts the repository root on ``sys.path``
(``[tool.pytest.ini_options] pythonpath``).
"""

pytest_plugins = ["tests.support.fixtures"]
