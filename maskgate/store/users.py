"""Dashboard users: names, roles and password hashes (scrypt via werkzeug)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from maskgate.const import USER_ROLES
from maskgate.core import utcnow
from maskgate.store.db import StoreError
from maskgate.store.schema import UserRow

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD_LENGTH = 10


class UserError(StoreError):
    """A user cannot be created or changed as asked."""


@dataclass(frozen=True, slots=True)
class User:
    username: str
    role: str
    created_at: datetime
    last_login_at: datetime | None
    sessions_valid_after: datetime | None = None  # sessions signed in earlier are over

    def session_valid(self, signed_in_at: datetime) -> bool:
        return self.sessions_valid_after is None or signed_in_at > self.sessions_valid_after


class UserStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, username: str, password: str, role: str) -> User:
        """Create a user; the password is stored only as a salted scrypt hash."""
        if not USERNAME_PATTERN.match(username):
            raise UserError(f"invalid username {username!r}: 1-64 letters, digits or _ . @ -")
        if role not in USER_ROLES:
            raise UserError(f"invalid role {role!r}: choose one of {', '.join(USER_ROLES)}")
        row = UserRow(username=username, password_hash=_hash(password), role=role, created_at=utcnow())
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                session.add(row)
        except IntegrityError:
            raise UserError(f"user {username!r} already exists") from None
        return _user(row)

    def set_password(self, username: str, password: str, at: datetime | None = None) -> None:
        """Replace a user's password (a forgotten one, or the demo's fresh one each run).

        Every session of the user signed in before `at` (default now) ends: whoever knew the
        old password is out.
        """
        password_hash = _hash(password)
        with Session(self.engine) as session, session.begin():
            row = self._row(session, username)
            row.password_hash = password_hash
            row.sessions_valid_after = at or utcnow()

    def end_sessions(self, username: str, at: datetime | None = None) -> None:
        """End every session of the user signed in before `at` (default now): sign-out everywhere."""
        with Session(self.engine) as session, session.begin():
            self._row(session, username).sessions_valid_after = at or utcnow()

    @staticmethod
    def _row(session: Session, username: str) -> UserRow:
        row = session.scalar(select(UserRow).where(UserRow.username == username))
        if row is None:
            raise UserError(f"no user {username!r}")
        return row

    def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password matches, else None (same work either way, against timing probes)."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            row = session.scalar(select(UserRow).where(UserRow.username == username))
            stored = row.password_hash if row else _DUMMY_HASH
            if not check_password_hash(stored, password) or row is None:
                return None
            row.last_login_at = utcnow()
            return _user(row)

    def get(self, username: str) -> User | None:
        with Session(self.engine) as session:
            row = session.scalar(select(UserRow).where(UserRow.username == username))
            return _user(row) if row else None


def _hash(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return generate_password_hash(password, method="scrypt")


_DUMMY_HASH = generate_password_hash("not a real password", method="scrypt")


def _user(row: UserRow) -> User:
    return User(row.username, row.role, row.created_at, row.last_login_at, row.sessions_valid_after)
