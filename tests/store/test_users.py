"""Dashboard users on both databases: hashing, roles, duplicates, authentication."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from maskgate.store import UserError, UserStore
from maskgate.store.schema import UserRow


@pytest.fixture
def users(migrated_engine) -> UserStore:
    return UserStore(migrated_engine)


def test_add_and_authenticate(users, migrated_engine):
    users.add("alice", "correct horse battery", "admin")
    with Session(migrated_engine) as session:
        stored = session.scalar(select(UserRow.password_hash))
    assert "correct horse" not in stored and stored.startswith("scrypt:")
    user = users.authenticate("alice", "correct horse battery")
    assert user is not None and user.role == "admin" and user.last_login_at is not None
    assert users.authenticate("alice", "wrong password!") is None
    assert users.authenticate("mallory", "correct horse battery") is None


def test_duplicate_user(users):
    users.add("bob", "a long password", "viewer")
    with pytest.raises(UserError, match="already exists"):
        users.add("bob", "another long one", "admin")


@pytest.mark.parametrize(
    ("username", "password", "role", "message"),
    [
        ("eve", "a long password", "root", "invalid role"),
        ("<script>", "a long password", "viewer", "invalid username"),
        ("eve", "short", "viewer", "too short"),
    ],
)
def test_invalid_users(users, username, password, role, message):
    with pytest.raises(UserError, match=message):
        users.add(username, password, role)


def test_set_password(users):
    users.add("carol", "the first password", "viewer")
    users.set_password("carol", "the second password")
    assert users.authenticate("carol", "the first password") is None
    assert users.authenticate("carol", "the second password").username == "carol"
    with pytest.raises(UserError, match="too short"):
        users.set_password("carol", "short")
    with pytest.raises(UserError, match="no user"):
        users.set_password("nobody", "a long enough password")
