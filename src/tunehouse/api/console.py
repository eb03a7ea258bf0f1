"""Placeholder router; the console dialect is being built."""

from fastapi import APIRouter

router = APIRouter()
