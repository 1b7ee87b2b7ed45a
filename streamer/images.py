"""Placeholder router; the images engineer replaces this module."""

from fastapi import APIRouter

router = APIRouter()
