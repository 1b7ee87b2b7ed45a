"""Placeholder router; the live engineer replaces this module."""

from fastapi import APIRouter

router = APIRouter()
