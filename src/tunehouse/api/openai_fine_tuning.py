"""Placeholder router; the openai_fine_tuning dialect is being built."""

from fastapi import APIRouter

router = APIRouter()
