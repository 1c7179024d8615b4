"""Fixtures shared by the toolkit tests."""
from .browser import browser  # noqa: F401  (the headless Chromium fixture)
