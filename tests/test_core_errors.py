"""edgekit.core.errors: one tree, unique codes, JSON-able dicts."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from edgekit.core import errors as e

ALL = sorted((c for _, c in inspect.getmembers(e, inspect.isclass) if issubclass(c, e.EdgekitError)),
             key=lambda c: c.__name__)

# class -> (parent, exit code), as documented in the module docstring
TREE = {
    e.EdgekitError: (Exception, 1),
    e.UsageError: (e.EdgekitError, 2),
    e.ConfigError: (e.EdgekitError, 3),
    e.ProfileError: (e.ConfigError, 3),
    e.ModelError: (e.EdgekitError, 4),
    e.UnsupportedOpError: (e.ModelError, 4),
    e.ParityError: (e.ModelError, 4),
    e.TargetFitError: (e.ModelError, 4),
    e.BundleError: (e.EdgekitError, 5),
    e.TrustError: (e.BundleError, 5),
    e.ExpiredError: (e.TrustError, 5),
    e.RollbackError: (e.TrustError, 5),
    e.IntegrityError: (e.BundleError, 5),
    e.CompatibilityError: (e.BundleError, 5),
    e.TransportError: (e.EdgekitError, 6),
    e.TimeoutError_: (e.TransportError, 6),
    e.InstallError: (e.EdgekitError, 7),
    e.HealthTimeoutError: (e.InstallError, 7),
    e.StorageError: (e.EdgekitError, 8),
    e.MessageError: (e.EdgekitError, 9),
    e.PkiError: (e.ConfigError, 3),
    e.NoticeError: (e.MessageError, 9),
    e.NoticeSignatureError: (e.NoticeError, 9),
    e.NoticeExpiredError: (e.NoticeError, 9),
    e.NoticeReplayError: (e.NoticeError, 9),
    e.NoticeTargetError: (e.NoticeError, 9),
    e.EncryptionError: (e.BundleError, 5),
    e.SlowRetrievalError: (e.TransportError, 6),
    e.AuthError: (e.EdgekitError, 10),
    e.ForbiddenError: (e.AuthError, 10),
    e.RollbackUnavailableError: (e.InstallError, 7),
    e.DatabaseSchemaError: (e.ConfigError, 3),
    e.RolloutConflictError: (e.UsageError, 2),
    e.TrustRepositoryError: (e.TrustError, 5),
    e.NotReleasedError: (e.TrustRepositoryError, 5),
    e.TrustMetadataExpiredError: (e.TrustRepositoryError, 5),
    e.TrustMetadataRollbackError: (e.TrustRepositoryError, 5),
}


def test_tree_is_complete():
    assert set(ALL) == set(TREE)


def test_codes_are_unique_slugs():
    codes = [c.code for c in ALL]
    assert len(codes) == len(set(codes))
    assert all(isinstance(code, str) and code and code == code.lower() and " " not in code for code in codes)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_parent_and_exit_code(cls):
    parent, exit_code = TREE[cls]
    assert cls.__bases__ == (parent,)
    assert type(cls.exit_code) is int and cls.exit_code == exit_code


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_to_dict_is_json_serializable(cls):
    err = cls("it broke", path=Path("/tmp/x"), items=(1, Path("a")), nested={1: {"s": {3}}}, raw=b"\x00", n=None)
    d = json.loads(json.dumps(err.to_dict()))
    assert d["code"] == cls.code and d["message"] == "it broke"
    assert d["details"] == {"path": "/tmp/x", "items": [1, "a"], "nested": {"1": {"s": "{3}"}},
                            "raw": "b'\\x00'", "n": None}
    assert ("hint" in d) == bool(cls.default_hint)


def test_hint_override_and_str():
    err = e.TrustError("bad signature", hint="re-release")
    assert err.to_dict() == {"code": "trust", "message": "bad signature", "hint": "re-release"}
    assert str(err) == "bad signature\n  hint: re-release"
    assert str(e.UsageError("plain")) == "plain"
    assert e.UsageError("plain").to_dict() == {"code": "usage", "message": "plain"}
    assert str(e.TrustError("x", hint="")) == "x"  # an explicit empty hint suppresses the default


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_error_from_dict_rebuilds_the_class(cls):
    back = e.error_from_dict(cls("went wrong", hint="do this", n=3).to_dict())
    assert type(back) is cls and back.message == "went wrong" and back.hint == "do this"
    assert back.details == {"n": 3} and back.exit_code == cls.exit_code


def test_error_from_dict_of_an_unknown_code_is_generic():
    back = e.error_from_dict({"code": "martian", "message": "??"})
    assert type(back) is e.EdgekitError and back.code == "martian" and back.exit_code == 1
