"""The dashboard's own start checks (`check_config`): settings the config rules alone cannot judge."""

from __future__ import annotations

import pytest

from maskgate.config import Config, DashboardConfig, RolloutConfig
from maskgate.dashboard.app import DashboardConfigError, check_config
from maskgate.dashboard.security import MIN_TOKEN_CHARS

from .conftest import SECRET


def _config(token: str) -> Config:
    return Config(dashboard=DashboardConfig(secret_key=SECRET), rollout=RolloutConfig(token=token))


@pytest.mark.security
def test_a_short_rollout_token_is_refused_at_start():
    """bearer_matches never accepts a token this short, so every gate download would fail silently."""
    with pytest.raises(
        DashboardConfigError, match=f"rollout.token is too short: use at least {MIN_TOKEN_CHARS}"
    ):
        check_config(_config("short"))
    check_config(_config(""))  # no token: gates cannot download, nothing to refuse
    check_config(_config("x" * MIN_TOKEN_CHARS))
