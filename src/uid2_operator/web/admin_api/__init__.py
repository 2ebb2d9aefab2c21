"""The admin API (JSON under /admin/api): participants, keys, secrets, admin tokens, audit."""

from __future__ import annotations

from uid2_operator.web.admin_api.app import create_admin_app

__all__ = ["create_admin_app"]
