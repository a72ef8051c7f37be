"""Authentication: key handling, token verification and revocation."""

from __future__ import annotations
