import pytest

# The contract suite is a plain module its subclasses import: have pytest
# rewrite its asserts as it does those of test modules.
pytest.register_assert_rewrite("tests.unit.api.store.contract")
