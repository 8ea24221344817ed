"""Shared fixtures: the toy tokenizer (trained once per session) and fresh tiny models."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")        # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import toy  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return toy.build_tokenizer()


@pytest.fixture
def model(tok):
    return toy.build_model(tok, seed=0)


@pytest.fixture(scope="session")
def toy_rows():
    return toy.train_eval_rows(seed=0, n_train=300, n_eval=40)
