"""Shared test set-up: quiet third-party progress bars, few CPU threads."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import diffusers
import transformers

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
