"""Placeholder router; the clips engineer replaces this module."""

from fastapi import APIRouter

router = APIRouter()
